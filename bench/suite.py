"""The peer suite: three models, mainsail and its peers, concurrency 1/16/64, 1- and 64-record requests.

``python -m bench suite`` builds each model (``bench.suite_models``), times its handler in process
(the floor), then serves it with each system in turn (``bench.suite_systems``: mainsail with default
settings and with batching off, Flask + gunicorn, FastAPI + uvicorn, MLServer with and without
adaptive batching), drives every cell with the closed-loop load generator (``bench.loadgen``), reads
the server's memory (PSS of its process group) after its cells, and stops it before the next one.
Loopback only, one server at a time, bounded: about ``cells * (warmup_s + duration_s + 0.7)`` plus
start-ups, slow cells (PyTorch, 64 records, high concurrency) getting longer windows up to
``WINDOW_CAP_S`` (about 12 minutes in all by default). ``bench.suite_report`` renders the tables,
the checks and one chart per model.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.floor import FloorResult, time_calls
from bench.loadgen import LoadResult
from bench.memory import group_memory_mib
from bench.procs import Server
from bench.pytorch import _noise, _torch_threads
from bench.serve import run_loadgen
from bench.suite_models import BUILDERS, JSON, MODELS, SuiteModel, floor_calls
from bench.suite_systems import FLOOR, SYSTEMS, WORKERS, System, invocation_path, mlserver_venv, serve

CONCURRENCIES = (1, 16, 64)
RECORDS = (1, 64)
QUICK_CONCURRENCIES = (1, 16)
WINDOW_CAP_S = (15.0, 3.0)
"""Longest measured window of a slow cell (full run, quick run); see ``cell_window``."""


@dataclass
class Cell:
    """One system at one concurrency and request size (the floor: one thread, ``concurrency`` 1)."""

    model: str
    system: str
    records: int
    concurrency: int
    result: LoadResult | FloorResult
    window_s: float = 0.0
    """Seconds measured (the suite's duration, longer for slow cells; see ``cell_window``)."""
    other_cores: float = 0.0
    """CPU used on the machine by anything but the benchmark's own processes, in cores (noise)."""

    @property
    def rps(self) -> float:
        """Requests (floor: calls) per second."""
        return self.result.rps if isinstance(self.result, LoadResult) else self.result.calls_per_s

    @property
    def errors(self) -> int:
        return self.result.errors if isinstance(self.result, LoadResult) else 0


@dataclass
class Memory:
    pss_mib: float
    rss_mib: float
    processes: int


@dataclass
class SuiteBenchmark:
    """Everything one run measured; ``bench.suite_report`` turns it into markdown and charts."""

    started: datetime
    command: str
    duration_s: float
    warmup_s: float
    quick: bool
    models: list[str]
    systems: list[str]
    concurrencies: list[int]
    records: list[int]
    cells: list[Cell] = field(default_factory=list)
    memory: dict[tuple[str, str], Memory] = field(default_factory=dict)
    ready_s: dict[tuple[str, str], float] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    """(model, system) -> why it was not measured."""
    replies: dict[tuple[str, str], str] = field(default_factory=dict)
    wall_s: float = 0.0
    pytorch_size: str = "tiny"

    @property
    def section(self) -> str:
        """The docs/benchmarks.md section this run writes: ``suite``, or ``suite-<size>`` for a run
        with another size of the PyTorch model (so that both can stand side by side)."""
        return "suite" if self.pytorch_size == "tiny" else f"suite-{self.pytorch_size}"

    def cell(self, model: str, system: str, records: int, concurrency: int) -> Cell | None:
        return next((c for c in self.cells if (c.model, c.system, c.records, c.concurrency)
                     == (model, system, records, concurrency)), None)

    @property
    def errors(self) -> int:
        return sum(c.errors for c in self.cells)


def run_suite(*, models: Sequence[str] = MODELS, systems: Sequence[str] = tuple(SYSTEMS),
              concurrencies: Sequence[int] | None = None, records: Sequence[int] = RECORDS,
              duration_s: float = 4.0, warmup_s: float | None = None, quick: bool = False,
              pytorch_size: str = "tiny", command: str = "python -m bench suite",
              log: Callable[[str], None] = print) -> SuiteBenchmark:
    """Measure every (model, system, records, concurrency) cell once, one server at a time.

    ``quick``: 1 s cells after 0.3 s of warm-up, concurrency 1 and 16 only (unless given).
    """
    if quick:
        duration_s = min(duration_s, 1.0)
    if warmup_s is None:
        warmup_s = 0.3 if quick else 1.0
    if concurrencies is None:
        concurrencies = QUICK_CONCURRENCIES if quick else CONCURRENCIES
    unknown = [m for m in models if m not in BUILDERS] + [s for s in systems if s not in SYSTEMS]
    if unknown or duration_s <= 0 or warmup_s < 0 or not records or not concurrencies:
        raise ValueError(f"models among {MODELS}, systems among {tuple(SYSTEMS)}, duration_s > 0 and "
                         f"warmup_s >= 0 (unknown: {unknown})")
    bench = SuiteBenchmark(started=datetime.now(UTC), command=command, duration_s=duration_s, warmup_s=warmup_s,
                           quick=quick, models=list(models), systems=list(systems),
                           concurrencies=list(concurrencies), records=list(records), pytorch_size=pytorch_size)
    t_start = time.monotonic()
    venv, why = (None, "not asked for")
    if any(SYSTEMS[s].v2 for s in systems):
        log("finding or building MLServer's virtualenv (scripts/peer-venv)")
        venv, why = mlserver_venv()
        if venv is None:
            log(f"MLServer skipped: {why}")
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-suite-"))
    try:
        for key in models:
            log(f"{key}: building the model")
            (tmp / key).mkdir()
            kwargs = {"size": pytorch_size} if key == "pytorch" else {}
            model = BUILDERS[key](tmp / key, tuple(records), **kwargs)
            bench.titles[key], bench.notes[key] = model.title, list(model.notes)
            if model.mlserver is not None and venv is not None:
                bench.notes[key].append(model.mlserver.note)
            _measure_floor(bench, model, log)
            for system in (SYSTEMS[s] for s in systems):
                reason = _skip_reason(system, model, venv, why)
                if reason:
                    bench.skipped[(key, system.key)] = reason
                    log(f"{key}: {system.label} skipped: {reason}")
                    continue
                _measure_system(bench, model, system, tmp / key, venv, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.wall_s = time.monotonic() - t_start
    return bench


def _skip_reason(system: System, model: SuiteModel, venv: Path | None, why: str) -> str:
    if not system.v2:
        return ""
    if model.mlserver is None:
        return model.mlserver_skipped
    return "" if venv is not None else f"MLServer could not be installed here ({why})"


def _measure_floor(bench: SuiteBenchmark, model: SuiteModel, log: Callable[[str], None]) -> None:
    threads = _torch_threads(1) if model.key == "pytorch" else contextlib.nullcontext()
    with threads:
        calls = floor_calls(model)
        for records in bench.records:
            log(f"{model.key}: in-process floor, {records} record(s): {bench.duration_s:g} s")
            other: list[float] = []
            with _noise({}, other):
                result = time_calls(calls[records], duration_s=bench.duration_s, warmup_s=min(bench.warmup_s, 1.0))
            bench.cells.append(Cell(model.key, FLOOR, records, 1, result, bench.duration_s, other[0]))


def _body(model: SuiteModel, system: System, records: int) -> tuple[bytes, str]:
    """The request ``system`` gets for ``records`` records, and its content type."""
    if system.v2 and model.mlserver is not None:
        return model.mlserver.bodies[records], JSON
    return model.bodies[records], model.content_type


def _answer(server: Server, path: str, body: bytes, content_type: str) -> str:
    """One request's answer (the probabilities of a V2 answer), to show that the systems agree."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, "Accept": JSON})
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        conn.close()
    if response.status == 200 and path.startswith("/v2/"):
        return "V2 outputs: " + json.dumps([o.get("data") for o in json.loads(text).get("outputs", [])])
    return text if response.status == 200 else f"HTTP {response.status}: {text}"


def cell_window(bench: SuiteBenchmark, floor: Cell | None, concurrency: int) -> tuple[float, float]:
    """(warm-up, window) for a cell: longer when its requests are slow next to the window.

    Only requests that start and end inside the window count, so a window only a few latencies long
    undercounts. The latency is guessed from the floor (``concurrency`` requests shared by the
    workers) and the window made six of them long (warm-up one and a half), up to ``WINDOW_CAP_S``.
    """
    guess = floor.result.p50_ms / 1000 * concurrency / WORKERS if floor is not None else 0.0
    cap = WINDOW_CAP_S[bench.quick]
    return (min(max(bench.warmup_s, 1.5 * guess), cap / 3), min(max(bench.duration_s, 6 * guess), cap))


def _measure_system(bench: SuiteBenchmark, model: SuiteModel, system: System, tmp: Path, venv: Path | None,
                    log: Callable[[str], None]) -> None:
    log(f"{model.key}: starting {system.label}")
    with serve(system, model, tmp, venv) as server:
        bench.ready_s[(model.key, system.key)] = server.ready_s
        url = server.url + invocation_path(system, model)
        for records in bench.records:
            body, content_type = _body(model, system, records)
            body_file = tmp / f"body-{system.key}-{records}"
            body_file.write_bytes(body)
            for concurrency in bench.concurrencies:
                warmup_s, window_s = cell_window(bench, bench.cell(model.key, FLOOR, records, 1), concurrency)
                log(f"{model.key}: {system.label}, {records} record(s), concurrency {concurrency}: "
                    f"{warmup_s:.3g} s warm-up + {window_s:.3g} s")
                other: list[float] = []
                with _noise({system.key: server}, other):
                    result = run_loadgen(url, body_file, concurrency=concurrency, duration_s=window_s,
                                         warmup_s=warmup_s, content_type=content_type)
                if result.errors:
                    log(f"  {result.errors} errors, e.g. {result.error_samples[:2]}; server log:\n"
                        f"{server.log_tail(1500)}")
                bench.cells.append(Cell(model.key, system.key, records, concurrency, result, window_s, other[0]))
        bench.replies[(model.key, system.key)] = _answer(server, invocation_path(system, model),
                                                         *_body(model, system, min(bench.records)))
        pss, rss, processes = group_memory_mib(server)
        bench.memory[(model.key, system.key)] = Memory(pss, rss, processes)
        log(f"  PSS {pss:.0f} MiB, RSS {rss:.0f} MiB over {processes} processes")
