"""The in-process floor: the user's handler chain called directly, with no HTTP and no server."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import percentile
from bench.model import import_script


@dataclass(frozen=True)
class FloorResult:
    calls: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    calls_per_s: float
    sample_output: str


def measure_floor(model_dir: Path, body: bytes, *, duration_s: float, warmup_s: float,
                  content_type: str = "text/csv") -> FloorResult:
    """Time ``input_fn -> predict_fn -> output_fn`` on ``body``, one call at a time, in this thread.

    The body is decoded to ``str`` first, as both servers do for text types before ``input_fn``.
    """
    module = import_script(model_dir / "code" / "inference.py")
    model = module.model_fn(str(model_dir))
    input_fn, predict_fn, output_fn = module.input_fn, module.predict_fn, module.output_fn
    text = body.decode("utf-8")

    def call() -> object:
        return output_fn(predict_fn(input_fn(text, content_type), model), "application/json")

    return time_calls(call, duration_s=duration_s, warmup_s=warmup_s)


def time_calls(call: Callable[[], object], *, duration_s: float, warmup_s: float) -> FloorResult:
    """Call ``call()`` back to back in this thread for ``duration_s`` (after ``warmup_s`` discarded),
    timing each call with ``perf_counter_ns``; the first call's result is kept as the sample."""
    sample = call()
    clock = time.perf_counter_ns
    deadline = clock() + int(warmup_s * 1e9)
    while clock() < deadline:
        call()
    timings: list[int] = []
    started = clock()
    end = started + int(duration_s * 1e9)
    now = started
    while now < end:
        t0 = clock()
        call()
        now = clock()
        timings.append(now - t0)
    elapsed = (now - started) / 1e9
    timings.sort()
    return FloorResult(
        calls=len(timings), duration_s=elapsed, p50_ms=percentile(timings, 50) / 1e6,
        p99_ms=percentile(timings, 99) / 1e6, calls_per_s=len(timings) / elapsed,
        sample_output=repr(sample)[:200],
    )
