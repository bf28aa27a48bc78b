"""The tabular benchmark: one record through the built-in tabular handler, in process and over HTTP.

``python -m bench tabular`` trains an XGBoost classifier with risk tables, imputation and a binary
calibration table, writes it in the reference training pipeline's layout (no inference script, so
``mainsail serve`` picks the tabular handler), and times one record, one call at a time:

(a) ``booster.inplace_predict`` on the already-preprocessed row (the floor);
(b) ``TabularHandler.invoke`` on the single-record fast path, a JSON object and a CSV line;
(c) the same with ``fast_path=False`` (the pandas batch path);
(d) ``mainsail serve`` with 1 and 2 workers over loopback HTTP (the serve benchmark's load generator),
    plus a canned server that answers without a model: the client's and loopback's own share.

It also times the fast path's pieces (parse, preprocess, predict, calibrate, encode) to show where
the time goes: each alone, and each as a stage of one request run piece after piece (where the
booster call between them leaves the caches colder). Everything is measured ``rounds`` times,
interleaved; tables show medians.
"""

from __future__ import annotations

import contextlib
import pickle
import resource
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.floor import FloorResult, time_calls
from bench.loadgen import LoadResult, percentile
from bench.procs import Server, free_port, machine_busy_s, running
from bench.report import Check, checks_table, machine_summary, versions
from bench.serve import HOST, ROOT, ServerInfo, canned_argv, mainsail_argv, run_loadgen, server_env
from bench.summary import CellSummary, ResultCounts

JSON = "application/json"
CSV = "text/csv"

# The model: 30 features, 4 of them categorical with risk tables, 10 numeric ones imputed.
N_NUMERIC = 26
CATEGORICAL = {"merchant_category": 50, "device_type": 20, "billing_country": 40, "channel": 25}
CATEGORICAL_AT = {"merchant_category": 2, "device_type": 9, "billing_country": 17, "channel": 26}
N_IMPUTED = 10
N_TREES = 100
MAX_DEPTH = 6
CALIBRATION_POINTS = 1000
N_TRAIN = 8000
N_CALIBRATION = 4000
SMOOTHING = 20.0
"""Risk tables: each category's positive rate, shrunk towards the overall rate by this many rows."""

LATENCY_GAP_TARGET_MS = 0.5
SPEEDUP_TARGET = 10.0
VERSIONS = ("mainsail", "xgboost", "numpy", "pandas", "orjson", "scikit-learn", "starlette", "uvicorn",
            "uvloop", "httptools")


# -- the model directory ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TabularModel:
    """A model directory in the reference layout plus one request, as a JSON object and a CSV line."""

    path: Path
    columns: list[str]
    categorical: dict[str, int]
    imputed: list[str]
    record: dict[str, Any]
    json_body: bytes
    csv_body: bytes
    trees: int


def feature_columns() -> tuple[list[str], list[str]]:
    """(all 30 feature names in model order, the numeric columns that have an imputation value)."""
    numeric = [f"num_{i:02d}" for i in range(N_NUMERIC)]
    columns = list(numeric)
    for name, at in sorted(CATEGORICAL_AT.items(), key=lambda item: item[1]):
        columns.insert(at, name)
    imputed = numeric[::2][:N_IMPUTED]  # every other numeric column, ten of them
    return columns, imputed


def build_tabular_model(path: Path, *, seed: int = 0) -> TabularModel:
    """Train the classifier on synthetic data (fixed seeds) and write the reference layout by hand."""
    import numpy as np
    import orjson
    import pandas as pd
    import xgboost

    from mainsail.features.artifacts import write_feature_columns
    from mainsail.features.fitting import fit_isotonic_table, write_table
    from mainsail.features.tabular import RiskTable, TabularPreprocessor

    columns, imputed = feature_columns()
    numeric = [c for c in columns if c not in CATEGORICAL]
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=len(numeric)) * (rng.random(len(numeric)) < 0.7)
    levels = {c: np.array([f"{c[:3].upper()}_{j:02d}" for j in range(k)]) for c, k in CATEGORICAL.items()}
    popularity = {c: rng.dirichlet(np.full(k, 0.7)) for c, k in CATEGORICAL.items()}
    effects = {c: rng.normal(scale=0.8, size=k) for c, k in CATEGORICAL.items()}

    def draw(n: int, missing_rate: float) -> tuple[pd.DataFrame, np.ndarray]:
        data: dict[str, Any] = {}
        logit = np.full(n, -0.5)
        for i, name in enumerate(numeric):
            data[name] = rng.normal(size=n)
            logit += weights[i] * data[name]
        logit += 0.7 * data[numeric[0]] * data[numeric[1]] - 0.5 * np.abs(data[numeric[2]])
        for name in CATEGORICAL:
            codes = rng.choice(len(levels[name]), size=n, p=popularity[name])
            data[name] = levels[name][codes]
            logit += effects[name][codes]
        labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32)
        for name in imputed:
            data[name][rng.random(n) < missing_rate] = np.nan
        return pd.DataFrame(data)[columns], labels

    train, y = draw(N_TRAIN, 0.05)
    prior = float(y.mean())
    risk: dict[str, dict[str, Any]] = {}
    for name in CATEGORICAL:
        stats = pd.DataFrame({"k": train[name], "y": y}).groupby("k")["y"].agg(["sum", "count"])
        bins = (stats["sum"] + SMOOTHING * prior) / (stats["count"] + SMOOTHING)
        risk[name] = {"bins": {str(k): float(v) for k, v in bins.items()}, "default_bin": prior}
    impute = {name: np.float64(np.nanmean(train[name].to_numpy())) for name in imputed}
    # The training matrix goes through the same rules the handler applies at serving time.
    pre = TabularPreprocessor(columns, {c: RiskTable.from_artifact(c, t) for c, t in risk.items()}, impute)
    params = {"objective": "binary:logistic", "max_depth": MAX_DEPTH, "eta": 0.1, "subsample": 0.8,
              "colsample_bytree": 0.8, "nthread": 1, "seed": seed}
    booster = xgboost.train(params, xgboost.DMatrix(pre.transform_frame(train), label=y, feature_names=columns),
                            num_boost_round=N_TREES)
    holdout, y_holdout = draw(N_CALIBRATION, 0.05)
    scores = booster.inplace_predict(pre.transform_frame(holdout), validate_features=False)
    points = fit_isotonic_table(scores, y_holdout, CALIBRATION_POINTS)

    path.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # xgboost notes that it writes a .bst name as UBJSON
        warnings.simplefilter("ignore", UserWarning)
        booster.save_model(str(path / "xgboost_model.bst"))
    write_feature_columns(path / "feature_columns.txt", columns)
    (path / "risk_table_map.pkl").write_bytes(pickle.dumps(risk))
    (path / "impute_dict.pkl").write_bytes(pickle.dumps(impute))
    write_table(path / "calibration" / "calibration_model.pkl", points)

    # The request: a fresh record, every feature by name; two imputed columns and one other are missing.
    one, _ = draw(1, 0.0)
    record: dict[str, Any] = {}
    for name in columns:
        value = one[name].iloc[0]
        record[name] = str(value) if name in CATEGORICAL else round(float(value), 6)
    plain = [c for c in numeric if c not in imputed]
    for name in (imputed[1], imputed[6], plain[3]):
        record[name] = None
    csv_line = ",".join("" if record[c] is None else str(record[c]) for c in columns) + "\n"
    return TabularModel(path, columns, dict(CATEGORICAL), imputed, record, orjson.dumps(record),
                        csv_line.encode(), booster.num_boosted_rounds())


# -- what is measured -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellSpec:
    key: str
    label: str
    where: str
    concurrency: int = 1


IN_PROCESS = [
    CellSpec("booster", "(a) `booster.inplace_predict(row)` on the preprocessed (1, 30) float32 row: "
             "the floor", "in process"),
    CellSpec("fast-json", "(b) handler, fast path: JSON record", "in process"),
    CellSpec("fast-csv", "(b) handler, fast path: CSV line", "in process"),
    CellSpec("batch-json", "(c) handler, batch path (`fast_path=False`): JSON record", "in process"),
    CellSpec("batch-csv", "(c) handler, batch path (`fast_path=False`): CSV line", "in process"),
]
HTTP = [
    CellSpec("http-w1-c1", "(d) `mainsail serve --workers 1`: JSON record", "HTTP", 1),
    CellSpec("http-w2-c1", "(d) `mainsail serve --workers 2`: JSON record", "HTTP", 1),
    CellSpec("http-w2-c16", "(d) `mainsail serve --workers 2`: JSON record", "HTTP", 16),
    CellSpec("canned-c1", "canned server (fixed answer, no model): client + loopback only", "HTTP", 1),
]
PIECES = [
    CellSpec("json-parse", "`orjson.loads(body)`", "JSON"),
    CellSpec("csv-parse", "`body.decode()` + `decode_record(line)`", "CSV"),
    CellSpec("transform-record", "`preprocessor.transform_record(record)` (risk tables, imputation, "
             "float32 row)", "JSON"),
    CellSpec("transform-values", "`preprocessor.transform_values(values)` (zip to a dict, then "
             "`transform_record`)", "CSV"),
    CellSpec("predict", "`scorer.predict(row)` (`inplace_predict` + the two-column array)", "both"),
    CellSpec("calibrate", f"`calibrate(raw, calibrator)` ({CALIBRATION_POINTS:,}-point lookup table)", "both"),
    CellSpec("encode", "`encode_scores(raw, calibrated, 'application/json')`", "both"),
]
JSON_PIECES = ("json-parse", "transform-record", "predict", "calibrate", "encode")
CSV_PIECES = ("csv-parse", "transform-values", "predict", "calibrate", "encode")
SEQUENCES = {"json": JSON_PIECES, "csv": CSV_PIECES}
SEQUENCE_SPECS = [CellSpec(f"seq-{kind}/{key}", f"in a {kind.upper()} sequence: {key}", kind.upper())
                  for kind, keys in SEQUENCES.items() for key in keys]
SPECS = {spec.key: spec for spec in IN_PROCESS + HTTP + PIECES + SEQUENCE_SPECS}
SERVERS = {"mainsail-w1": 1, "mainsail-w2": 2}


@dataclass
class Sample(ResultCounts):
    """One round of one cell."""

    key: str
    round: int
    result: FloorResult | LoadResult
    other_cores: float
    """CPU used on the machine by anything but the benchmark's own processes, in cores (noise)."""

    @property
    def rate(self) -> float:
        return self.result.rps if isinstance(self.result, LoadResult) else self.result.calls_per_s



@dataclass
class TabularBenchmark:
    """Everything one run measured; ``render_tabular_section`` turns it into markdown."""

    started: datetime
    command: str
    duration_s: float
    warmup_s: float
    piece_s: float
    rounds: int
    quick: bool
    model: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    servers: list[ServerInfo] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)
    """The in-process JSON reply, and the first measured HTTP answer of each mainsail cell."""
    wall_s: float = 0.0

    def cell(self, key: str) -> CellSummary | None:
        samples = [s for s in self.samples if s.key == key]
        return CellSummary(SPECS[key], samples) if samples else None

    def p50(self, key: str) -> float | None:
        cell = self.cell(key)
        return cell.p50_ms if cell is not None else None

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)


# -- running it -------------------------------------------------------------------------------------
def run_tabular_benchmark(*, duration_s: float = 5.0, warmup_s: float | None = None, rounds: int = 3,
                          quick: bool = False, command: str = "python -m bench tabular",
                          log: Callable[[str], None] = print) -> TabularBenchmark:
    """Build the model, start the servers, then measure every cell ``rounds`` times, interleaved.

    Bounded: about ``rounds * (9 * (warmup_s + duration_s) + 7 * piece_s)`` plus training and
    start-up, where ``piece_s = min(duration_s, 2)`` (each fast-path piece gets a shorter window).
    """
    if quick:
        duration_s, rounds = min(duration_s, 0.4), 1
    if warmup_s is None:
        warmup_s = 0.15 if quick else 1.0
    if rounds < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("rounds must be >= 1, duration_s > 0 and warmup_s >= 0")
    piece_s = min(duration_s, 2.0) / (2 if quick else 1)
    bench = TabularBenchmark(started=datetime.now(UTC), command=command, duration_s=duration_s,
                             warmup_s=warmup_s, piece_s=piece_s, rounds=rounds, quick=quick)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-tabular-"))
    try:
        log(f"training the model and writing it to {tmp / 'model'}")
        model = build_tabular_model(tmp / "model")
        bench.model = {"trees": model.trees, "features": len(model.columns), "categorical": model.categorical,
                       "imputed": len(model.imputed), "json_bytes": len(model.json_body),
                       "csv_bytes": len(model.csv_body), "json_body": model.json_body.decode(),
                       "csv_body": model.csv_body.decode()}
        calls, pieces, sequences = _in_process_calls(model, bench)
        body_file = tmp / "record.json"
        body_file.write_bytes(model.json_body)
        servers: dict[str, Server] = {}
        try:
            with contextlib.ExitStack() as stack:
                servers = _start_servers(stack, model, tmp, log)
                for round_ in range(1, rounds + 1):
                    forward = round_ % 2 == 1
                    for spec in IN_PROCESS if forward else IN_PROCESS[::-1]:
                        log(f"round {round_}/{rounds}: {spec.key}: {warmup_s:g} s warm-up + {duration_s:g} s")
                        bench.samples.append(_time_in_process(spec.key, round_, calls[spec.key],
                                                              duration_s, warmup_s, servers))
                    log(f"round {round_}/{rounds}: the fast path's {len(PIECES)} pieces alone, then in "
                        f"{len(sequences)} sequences, {piece_s:g} s each")
                    for spec in PIECES:
                        bench.samples.append(_time_in_process(spec.key, round_, pieces[spec.key], piece_s,
                                                              min(warmup_s, 0.2), servers))
                    for kind, (first, stages) in sequences.items():
                        bench.samples += _time_sequence(kind, round_, first, stages, piece_s,
                                                        min(warmup_s, 0.2), servers)
                    for spec in HTTP if forward else HTTP[::-1]:
                        log(f"round {round_}/{rounds}: {spec.key}: {warmup_s:g} s warm-up + {duration_s:g} s")
                        sample = _time_http(spec, round_, body_file, duration_s, warmup_s, servers)
                        result = sample.result
                        assert isinstance(result, LoadResult)
                        if result.errors:
                            log(f"  {result.errors} errors, e.g. {result.error_samples[:2]}; server log:\n"
                                f"{servers[_server_of(spec.key)].log_tail(1500)}")
                        bench.samples.append(sample)
                        if spec.key.startswith("http-") and spec.key not in bench.replies:
                            bench.replies[spec.key] = result.sample_response
        finally:  # every server has been stopped by now
            bench.servers = [ServerInfo(name, s.argv, s.ready_s, s.stop_s, s.exit_code)
                             for name, s in servers.items()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.wall_s = time.monotonic() - t_start
    return bench


Stages = list[tuple[str, Callable[[Any], Any]]]


def _in_process_calls(model: TabularModel, bench: TabularBenchmark
                      ) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], object]],
                                 dict[str, tuple[bytes, Stages]]]:
    """Load the handler both ways, check both paths agree, and return the calls to time."""
    import numpy as np
    import orjson

    from mainsail.codecs.csv import decode_record
    from mainsail.features.calibration import calibrate
    from mainsail.features.output import encode_scores
    from mainsail.handlers.base import Invocation
    from mainsail.handlers.tabular import TabularHandler, XGBoostScorer

    fast = TabularHandler(model.path)
    fast.load()
    batch = TabularHandler(model.path, fast_path=False)
    batch.load()
    pre, scorer, calibrator = fast.preprocessor, fast.scorer, fast.calibrator
    assert pre is not None and isinstance(scorer, XGBoostScorer) and calibrator is not None
    json_body, csv_body = model.json_body, model.csv_body
    row = fast.features(json_body, JSON)
    for handler, body, kind in ((fast, csv_body, CSV), (batch, json_body, JSON), (batch, csv_body, CSV)):
        other = handler.features(body, kind)
        if not np.array_equal(row, other, equal_nan=True):
            raise RuntimeError(f"the {kind} body gives other features on the "
                               f"{'fast' if handler.fast_path else 'batch'} path: {row} vs {other}")
    json_in, csv_in = Invocation(json_body, JSON, JSON), Invocation(csv_body, CSV, JSON)
    reply = fast.invoke(json_in).body
    for handler, invocation in ((fast, csv_in), (batch, json_in), (batch, csv_in)):
        if handler.invoke(invocation).body != reply:
            raise RuntimeError(f"replies differ: {reply!r} vs {handler.invoke(invocation).body!r}")
    bench.replies["in-process"] = reply.decode()

    booster = scorer.booster
    record = orjson.loads(json_body)
    line = csv_body.decode("utf-8").strip("\r\n")
    values = decode_record(line)
    assert values is not None
    raw = scorer.predict(row)
    calibrated = calibrate(raw, calibrator)
    calls: dict[str, Callable[[], object]] = {
        "booster": lambda: booster.inplace_predict(row, validate_features=False),
        "fast-json": lambda: fast.invoke(Invocation(json_body, JSON, JSON)),
        "fast-csv": lambda: fast.invoke(Invocation(csv_body, CSV, JSON)),
        "batch-json": lambda: batch.invoke(Invocation(json_body, JSON, JSON)),
        "batch-csv": lambda: batch.invoke(Invocation(csv_body, CSV, JSON)),
    }
    pieces: dict[str, Callable[[], object]] = {
        "json-parse": lambda: orjson.loads(json_body),
        "csv-parse": lambda: decode_record(csv_body.decode("utf-8").strip("\r\n")),
        "transform-record": lambda: pre.transform_record(record),
        "transform-values": lambda: pre.transform_values(values),
        "predict": lambda: scorer.predict(row),
        "calibrate": lambda: calibrate(raw, calibrator),
        "encode": lambda: encode_scores(raw, calibrated, JSON, layout="xgboost"),
    }
    # The same functions as the stages of one request: each takes the previous one's output.
    tail: Stages = [
        ("predict", scorer.predict),
        ("calibrate", lambda raw: (raw, calibrate(raw, calibrator))),
        ("encode", lambda scores: encode_scores(scores[0], scores[1], JSON, layout="xgboost")),
    ]
    sequences: dict[str, tuple[bytes, Stages]] = {
        "json": (json_body, [("json-parse", orjson.loads), ("transform-record", pre.transform_record), *tail]),
        "csv": (csv_body, [("csv-parse", lambda body: decode_record(body.decode("utf-8").strip("\r\n"))),
                           ("transform-values", pre.transform_values), *tail]),
    }
    for kind, (_, stages) in sequences.items():
        assert tuple(key for key, _ in stages) == SEQUENCES[kind]
    return calls, pieces, sequences


def _start_servers(stack: contextlib.ExitStack, model: TabularModel, tmp: Path,
                   log: Callable[[str], None]) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    port = free_port()
    log(f"starting the canned server on port {port}")
    servers["canned"] = stack.enter_context(
        running("canned", canned_argv(port), host=HOST, port=port, env=server_env(), cwd=ROOT,
                ready_timeout_s=30))
    for name, workers in SERVERS.items():
        port = free_port()
        log(f"starting mainsail serve --workers {workers} on port {port}")
        env = server_env({"MAINSAIL_HOME": str(tmp / f"home-{name}")})
        argv = mainsail_argv(model.path, port, workers, log_level="warning")  # as its section documents
        server = stack.enter_context(running(name, argv, host=HOST, port=port, env=env, cwd=ROOT))
        log(f"  ready after {server.ready_s:.1f} s")
        servers[name] = server
    return servers


def _server_of(key: str) -> str:
    return "canned" if key.startswith("canned") else f"mainsail-{key.split('-')[1]}"


def _own_cpu_s(servers: dict[str, Server]) -> float:
    """CPU seconds used so far by this process, its reaped children and the running servers."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.process_time() + children.ru_utime + children.ru_stime
            + sum(s.cpu_s() for s in servers.values()))


@contextlib.contextmanager
def _noise(servers: dict[str, Server], out: list[float]) -> Iterator[None]:
    """Appends to ``out`` the cores used by other processes on the machine while the block ran."""
    ours, busy, started = _own_cpu_s(servers), machine_busy_s(), time.monotonic()
    yield
    wall = time.monotonic() - started
    other = (machine_busy_s() - busy) - (_own_cpu_s(servers) - ours)
    out.append(max(0.0, other) / wall if wall > 0 else 0.0)


def _time_in_process(key: str, round_: int, call: Callable[[], object], duration_s: float, warmup_s: float,
                     servers: dict[str, Server]) -> Sample:
    other: list[float] = []
    with _noise(servers, other):
        result = time_calls(call, duration_s=duration_s, warmup_s=warmup_s)
    return Sample(key, round_, result, other[0])


def time_stages(first: Any, stages: Stages, *, duration_s: float, warmup_s: float) -> dict[str, FloorResult]:
    """Run ``stages`` one after another on ``first`` (each takes the previous one's output), over and
    over for ``duration_s`` after ``warmup_s``, timing each stage of each run with ``perf_counter_ns``."""
    clock = time.perf_counter_ns
    functions = [fn for _, fn in stages]

    def run(into: list[list[int]] | None) -> None:
        value = first
        t0 = clock()
        for i, fn in enumerate(functions):
            value = fn(value)
            t1 = clock()
            if into is not None:
                into[i].append(t1 - t0)
            t0 = t1

    deadline = clock() + int(warmup_s * 1e9)
    while clock() < deadline:
        run(None)
    timings: list[list[int]] = [[] for _ in functions]
    started = clock()
    end = started + int(duration_s * 1e9)
    while clock() < end:
        run(timings)
    elapsed = (clock() - started) / 1e9
    out = {}
    for (key, _), times in zip(stages, timings, strict=True):
        times.sort()
        out[key] = FloorResult(calls=len(times), duration_s=elapsed, p50_ms=percentile(times, 50) / 1e6,
                               p99_ms=percentile(times, 99) / 1e6, calls_per_s=len(times) / elapsed,
                               sample_output="")
    return out


def _time_sequence(kind: str, round_: int, first: bytes, stages: Stages, duration_s: float, warmup_s: float,
                   servers: dict[str, Server]) -> list[Sample]:
    other: list[float] = []
    with _noise(servers, other):
        results = time_stages(first, stages, duration_s=duration_s, warmup_s=warmup_s)
    return [Sample(f"seq-{kind}/{key}", round_, result, other[0]) for key, result in results.items()]


def _time_http(spec: CellSpec, round_: int, body_file: Path, duration_s: float, warmup_s: float,
               servers: dict[str, Server]) -> Sample:
    server = servers[_server_of(spec.key)]
    other: list[float] = []
    with _noise(servers, other):
        result = run_loadgen(f"{server.url}/invocations", body_file, concurrency=spec.concurrency,
                             duration_s=duration_s, warmup_s=warmup_s, content_type=JSON)
    return Sample(spec.key, round_, result, other[0])


# -- the report -------------------------------------------------------------------------------------
def tabular_checks(bench: TabularBenchmark) -> list[Check]:
    checks = []
    for kind in ("json", "csv"):
        fast, batch = bench.cell(f"fast-{kind}"), bench.cell(f"batch-{kind}")
        name = f"(i) one {kind.upper()} record: handler batch path p50 ÷ fast path p50"
        if fast is None or batch is None or fast.p50_ms <= 0:
            checks.append(Check(name, f"≥ {SPEEDUP_TARGET:g}×", "—", None))
            continue
        ratio = batch.p50_ms / fast.p50_ms
        checks.append(Check(name, f"≥ {SPEEDUP_TARGET:g}×", f"{batch.p50_ms:.3f} ÷ {fast.p50_ms:.3f} = "
                            f"{ratio:.1f}×", ratio >= SPEEDUP_TARGET))
    e2e, floor = bench.cell("http-w1-c1"), bench.p50("booster")
    name = "(ii) `mainsail serve --workers 1`, concurrency 1, p50 − in-process booster call p50"
    if e2e is None or floor is None:
        checks.append(Check(name, f"≤ {LATENCY_GAP_TARGET_MS:g} ms", "—", None))
    else:
        gap = e2e.p50_ms - floor
        checks.append(Check(name, f"≤ {LATENCY_GAP_TARGET_MS:g} ms",
                            f"{e2e.p50_ms:.3f} − {floor:.3f} = {gap:.3f} ms",
                            gap <= LATENCY_GAP_TARGET_MS and e2e.errors == 0))
    return checks


def results_table(bench: TabularBenchmark) -> str:
    rows = ["| measurement | where | concurrency | p50 ms | p99 ms | rate | errors |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for spec in IN_PROCESS + HTTP:
        cell = bench.cell(spec.key)
        if cell is None:
            continue
        unit = "req/s" if spec.where == "HTTP" else "calls/s"
        concurrency = str(spec.concurrency) if spec.where == "HTTP" else "1 (one thread)"
        rows.append(f"| {spec.label} | {spec.where} | {concurrency} | {cell.p50_ms:.3f} | {cell.p99_ms:.3f} | "
                    f"{cell.rate:,.0f} {unit} | {cell.errors} |")
    return "\n".join(rows)


def breakdown(bench: TabularBenchmark) -> dict[str, float | None]:
    """Where the end-to-end p50 goes (ms): handler over the booster call, server + HTTP over the handler."""
    e2e, invoke, floor, canned = (bench.p50(k) for k in ("http-w1-c1", "fast-json", "booster", "canned-c1"))
    out: dict[str, float | None] = {"e2e": e2e, "invoke": invoke, "floor": floor, "canned": canned,
                                    "handler_over_floor": None, "server_over_handler": None,
                                    "server_only": None}
    if invoke is not None and floor is not None:
        out["handler_over_floor"] = invoke - floor
    if e2e is not None and invoke is not None:
        out["server_over_handler"] = e2e - invoke
        if canned is not None:
            out["server_only"] = e2e - invoke - canned
    return out


def pieces_table(bench: TabularBenchmark) -> str:
    def us(key: str) -> str:
        value = bench.p50(key)
        return "–" if value is None else f"{value * 1e3:.1f}"

    rows = ["| piece of the fast path | alone p50 µs | as a stage of a JSON request p50 µs | "
            "as a stage of a CSV request p50 µs |", "|---|---:|---:|---:|"]
    for spec in PIECES:
        rows.append(f"| {spec.label} | {us(spec.key)} | {us(f'seq-json/{spec.key}')} | "
                    f"{us(f'seq-csv/{spec.key}')} |")
    sums: list[str] = []
    wholes: list[str] = []
    rests: list[str] = []
    for kind, keys in SEQUENCES.items():
        parts = [bench.p50(f"seq-{kind}/{key}") for key in keys]
        whole = bench.p50(f"fast-{kind}")
        if whole is None or any(part is None for part in parts):
            for column in (sums, wholes, rests):
                column.append("–")
            continue
        total = sum(part for part in parts if part is not None)
        sums.append(f"{total * 1e3:.1f}")
        wholes.append(f"{whole * 1e3:.1f}")
        rests.append(f"{(whole - total) * 1e3:.1f}")
    rows.append(f"| sum of the stages | | {' | '.join(sums)} |")
    rows.append(f"| whole `handler.invoke` on the fast path, (b) | | {' | '.join(wholes)} |")
    rows.append(f"| rest: content-type checks, `Invocation`/`Reply`, the handler's own calls | | "
                f"{' | '.join(rests)} |")
    return "\n".join(rows)


def breakdown_text(bench: TabularBenchmark) -> str:
    b = breakdown(bench)
    if any(b[k] is None for k in ("e2e", "invoke", "floor", "canned")):
        return "Not every cell was measured: no breakdown.\n"
    e2e, invoke, floor, canned = (float(b[k] or 0.0) for k in ("e2e", "invoke", "floor", "canned"))
    gap = e2e - floor
    handler, server_only = invoke - floor, e2e - invoke - canned

    def row(part: str, how: str, ms: float) -> str:
        share = f"{ms / gap * 100:.0f} %" if gap > 0 else "–"
        return f"| {part} | {how} | {ms:.3f} | {share} |"

    rows = [
        f"End to end p50 (`--workers 1`, concurrency 1) over the booster call: {e2e:.3f} − {floor:.3f} = "
        f"{gap:.3f} ms. Medians do not add exactly; read the parts as estimates.",
        "",
        "| part | estimated as | ms | share of the gap |",
        "|---|---|---:|---:|",
        row("the handler around the booster call (parse, preprocess, calibrate, encode, dispatch)",
            "(b) JSON p50 − (a) p50", handler),
        row("client + loopback TCP (the load generator's own time and the kernel's)", "canned server p50",
            canned),
        row("mainsail's server around the handler (HTTP, routing, worker thread, response)",
            "(d) p50 − (b) JSON p50 − canned p50", server_only),
    ]
    return "\n".join(rows) + "\n"


def rounds_table(bench: TabularBenchmark) -> str:
    rows = ["| round | measurement | conc. | p50 µs | p99 µs | rate /s | calls or requests | other load, cores |",
            "|---:|---|---:|---:|---:|---:|---:|---:|"]
    order = {spec.key: i for i, spec in enumerate(IN_PROCESS + HTTP + PIECES + SEQUENCE_SPECS)}
    for s in sorted(bench.samples, key=lambda s: (s.round, order[s.key])):
        spec = SPECS[s.key]
        rows.append(f"| {s.round} | {s.key} | {spec.concurrency} | {s.result.p50_ms * 1e3:,.1f} | "
                    f"{s.result.p99_ms * 1e3:,.1f} | {s.rate:,.0f} | {s.count:,} | {s.other_cores:.2f} |")
    return "\n".join(rows)


def render_tabular_section(bench: TabularBenchmark) -> str:
    checks = tabular_checks(bench)
    quick = ("\n> **Quick smoke run**: measurements this short only show that the harness works; "
             "do not read the numbers.\n" if bench.quick else "")
    m = bench.model
    categorical = ", ".join(f"`{name}` ({k})" for name, k in m.get("categorical", {}).items())
    servers = "; ".join(
        f"{s.system} was ready {s.ready_s:.1f} s after start and "
        + (f"stopped on SIGTERM in {s.stop_s:.1f} s (exit code {s.exit_code})" if s.stop_s is not None
           else f"was killed (exit code {s.exit_code})")
        for s in bench.servers
    )
    reply = bench.replies.get("in-process", "")
    same = [k for k, v in bench.replies.items() if k != "in-process" and v and reply.startswith(v)]
    differs = [k for k, v in bench.replies.items() if k != "in-process" and v and not reply.startswith(v)]
    http_answer = ("Every HTTP cell's first answer was byte for byte the in-process reply."
                   if same and not differs else
                   f"HTTP answers that differ from the in-process reply: {', '.join(differs)}." if differs
                   else "")
    worst = max((s.other_cores for s in bench.samples), default=0.0)
    noise = (f"Other processes used up to {worst:.2f} cores during a measurement (last column of the "
             "per-round table)" + (": treat this run's numbers with care." if worst >= 0.25 else "."))
    return f"""
## The tabular handler: one record, fast path vs batch path vs the booster call

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all).
{quick}
* **Machine**: {machine_summary()}.
* **Versions**: {versions(VERSIONS)}.

### Results

Median over {bench.rounds} interleaved round{"s" if bench.rounds > 1 else ""} of {bench.duration_s:g} s
per cell after {bench.warmup_s:g} s of warm-up. Latencies in milliseconds.

{results_table(bench)}

### Target checks

{checks_table(checks)}

### Where the time goes

{breakdown_text(bench)}
The handler's fast path, piece by piece, on the same record in process: each function called
alone, back to back; and the same functions run one after another as the stages of one request
(each taking the previous one's output, each stage timed), as `invoke` runs them. The stages run
slower than alone: the booster call between them evicts the others' data from the caches.
{bench.piece_s:g} s per measurement per round.

{pieces_table(bench)}

### Method

* **Model**: an XGBoost `binary:logistic` booster, {m.get("trees")} trees of depth ≤ {MAX_DEPTH}
  (`eta` 0.1, `nthread` 1), on {m.get("features")} features: {N_NUMERIC} numeric and 4 categorical with
  risk tables ({categorical} categories), {m.get("imputed")} numeric columns with imputation values,
  and a binary calibration table of {CALIBRATION_POINTS:,} points (isotonic, sampled on
  `linspace(0, 1, {CALIBRATION_POINTS})`). Trained on {N_TRAIN:,} synthetic rows (fixed seeds; the
  risk tables are smoothed positive rates per category, the imputation values column means) and
  written by hand in the reference layout: `xgboost_model.bst`, `feature_columns.txt`,
  `risk_table_map.pkl`, `impute_dict.pkl`, `calibration/calibration_model.pkl`. No inference script,
  so `mainsail serve` picks the built-in tabular handler.
* **Request**: one record with all {m.get("features")} features by name, two imputed columns and one
  other numeric column `null`: a JSON object ({m.get("json_bytes")} bytes) and the same values as one
  CSV line in `feature_columns.txt` order ({m.get("csv_bytes")} bytes, empty fields for the missing
  values). `Accept: application/json`. Both bodies give the same feature row on both paths, and all
  four in-process replies are identical. {http_answer}
* **In process** (one thread, `OMP_NUM_THREADS=1`): each call timed with `perf_counter_ns`, back to
  back, for the window. (a) is `booster.inplace_predict(row, validate_features=False)` (the handler's
  own call) on the row the handler's preprocessing gives; (b) is `TabularHandler(dir).invoke(
  Invocation(body, content_type, "application/json"))`; (c) the same with `fast_path=False`, where the
  body goes through the codec to a pandas frame and `transform_frame`.
* **End to end**: `mainsail serve DIR --workers N --log-level warning`, every other setting at its
  default; the serve benchmark's closed-loop load generator (`bench/loadgen.py`, its own process,
  keep-alive, uvloop) posts the JSON record. The canned server (`bench/peers/canned.py`) answers a
  fixed 200 with no model: its p50 is the client's and loopback's share of a request. Servers run
  side by side on free loopback ports, one under load at a time, and are stopped with SIGTERM at the
  end: {servers}.
* **Rounds**: each round times the in-process cells, the fast path's pieces (alone, then as stages),
  then the HTTP cells, alternating the order of the cells; tables show each figure's median over
  the rounds.
* **Noise**: client and servers share the machine's cores. {noise}

### Per round

Every measurement of every round, in microseconds. The `seq-*` rows are the stages of one request
(their rate is requests run through every stage per second). "other load" is the CPU that processes
other than the benchmark's own used during the measurement, in cores.

{rounds_table(bench)}

<details><summary>The request bodies and the reply</summary>

```
{m.get("json_body", "")}
{m.get("csv_body", "").rstrip()}
{reply}
```

</details>
"""
