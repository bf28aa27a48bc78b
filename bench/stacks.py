"""Sort py-spy's sampled stacks into where a request's time goes: model, handler, codecs, log, metrics, HTTP...

``py-spy record -f raw`` writes one line per distinct stack: its frames from the thread's root to the
leaf, separated by ``;``, each ``function (file:line)``, then a space and how many samples had it.
``classify`` gives each stack one bucket:

1. a frame in the user's script (``inference.py``) anywhere in the stack makes it the model's: the
   outermost such frame (the function the server called) names the bucket, whatever it called below
   (numpy, xgboost, json) included;
2. otherwise the frames are scanned from the leaf upward, and the first one that matches a rule of
   ``RULES`` (checked in order) gives the bucket; a stack no rule matches is "other".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

MODEL_INPUT = "model: input_fn"
MODEL_PREDICT = "model: predict_fn"
MODEL_OUTPUT = "model: output_fn"
MODEL_OTHER = "model: other script code"
HANDLER = "script handler glue (mainsail/handlers)"
CODECS = "decode / encode (mainsail/codecs)"
ACCESS_LOG = "access log (logging, mainsail/serve/access*)"
METRICS = "metrics (prometheus_client, mainsail/serve/metrics)"
HANDOFF = "thread hand-off (concurrent.futures, threading, asyncio futures)"
INVOCATION = "mainsail invocation path (mainsail/serve/app, http, runtime)"
MAINSAIL_OTHER = "mainsail, other code"
PEER = "peer app (bench/peers)"
FASTAPI = "FastAPI / pydantic"
STARLETTE = "Starlette / anyio"
HTTP = "HTTP parse + uvicorn protocol (uvicorn, httptools)"
LOOP = "event loop (asyncio, uvloop)"
MODEL_LIBS = "model libraries, caller not sampled (numpy, xgboost, sklearn)"
NATIVE = "threads with no Python stack sampled"
PROFILER = "the profiler's GC timer (its own cost)"
OTHER = "other"
BUCKETS = (MODEL_INPUT, MODEL_PREDICT, MODEL_OUTPUT, MODEL_OTHER, MODEL_LIBS, HANDLER, CODECS, ACCESS_LOG, METRICS,
           HANDOFF, INVOCATION, MAINSAIL_OTHER, PEER, FASTAPI, STARLETTE, HTTP, LOOP, NATIVE, PROFILER, OTHER)
MODEL_BUCKETS = {"input_fn": MODEL_INPUT, "predict_fn": MODEL_PREDICT, "output_fn": MODEL_OUTPUT}


@dataclass(frozen=True)
class Rule:
    bucket: str
    path: re.Pattern[str]
    """Searched in the frame's file path, with ``/`` separators and a ``/`` put in front."""
    function: re.Pattern[str] | None = None
    """When given, the frame's function name must match it too."""


def _rule(bucket: str, path: str, function: str | None = None) -> Rule:
    return Rule(bucket, re.compile(path), re.compile(function) if function else None)


RULES = (
    _rule(PROFILER, r"/sitecustomize\.py$", r"^_gc_timer$"),
    _rule(HANDLER, r"/mainsail/handlers/"),
    _rule(CODECS, r"/mainsail/codecs/"),
    _rule(ACCESS_LOG, r"/mainsail/serve/access"),
    _rule(ACCESS_LOG, r"/mainsail/log\.py$"),
    _rule(ACCESS_LOG, r"/logging/"),
    _rule(METRICS, r"/prometheus_client/"),
    _rule(METRICS, r"/mainsail/serve/metrics\.py$"),
    _rule(METRICS, r"/mainsail/prometheus\.py$"),
    _rule(HANDOFF, r"/concurrent/futures/"),
    _rule(HANDOFF, r"/threading\.py$"),
    _rule(HANDOFF, r"/queue\.py$"),
    _rule(HANDOFF, r"/asyncio/futures\.py$"),
    _rule(HANDOFF, r"/asyncio/base_events\.py$", r"(run_in_executor|call_soon_threadsafe|_write_to_self)$"),
    _rule(INVOCATION, r"/mainsail/serve/(app|http|runtime|placement|batching)\.py$"),
    _rule(MAINSAIL_OTHER, r"/mainsail/"),
    _rule(PEER, r"/bench/peers/"),
    _rule(FASTAPI, r"/(fastapi|pydantic|pydantic_core)/"),
    _rule(STARLETTE, r"/(starlette|anyio)/"),
    _rule(HTTP, r"/(uvicorn|httptools|h11)/"),
    _rule(LOOP, r"/(asyncio|uvloop)/"),
    _rule(LOOP, r"/selectors\.py$"),
    # --nonblocking reads a running stack, and sometimes loses its outer frames: the script's among them.
    _rule(MODEL_LIBS, r"/(numpy|xgboost|sklearn|scipy|joblib)/"),
)


@dataclass(frozen=True)
class Frame:
    function: str
    path: str


_LINE = re.compile(r":\d+$")


def parse_frame(text: str) -> Frame:
    """``function (path:line)`` (or ``function (path)``, without ``--nolineno``'s line) as a Frame."""
    text = text.strip()
    if text.endswith(")") and " (" in text:
        function, _, where = text[:-1].rpartition(" (")
        return Frame(function, _LINE.sub("", where).replace("\\", "/"))
    return Frame(text, "")


_THREAD = re.compile(r"^thread \((0x[0-9a-fA-F]+|\d+)\)")


def parse_raw(text: str) -> Iterator[tuple[int | None, list[Frame], int]]:
    """(thread, frames from root to leaf, samples) for each line of ``py-spy record -f raw`` output.

    The thread is the OS thread id of ``--threads``' first pseudo-frame (``thread (TID): NAME``), else None.
    """
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        parts = [f for f in stack.split(";") if f.strip()]
        thread = _THREAD.match(parts[0]) if parts else None
        if thread is not None:
            parts = parts[1:]
        yield (int(thread.group(1), 0) if thread else None), [parse_frame(f) for f in parts], int(count)


def _script_re(script: str) -> re.Pattern[str]:
    return re.compile(r"(^|/)" + re.escape(script) + "$")


def classify(frames: Sequence[Frame], script: str = "inference.py") -> str:
    """The bucket of one stack (frames from root to leaf); see the module's docstring."""
    script_path = _script_re(script)
    for frame in frames:  # outermost first
        if script_path.search(frame.path):
            return MODEL_BUCKETS.get(frame.function, MODEL_OTHER)
    for frame in reversed(frames):  # leaf first
        path = "/" + frame.path.lstrip("/")
        for rule in RULES:
            if rule.path.search(path) and (rule.function is None or rule.function.search(frame.function)):
                return rule.bucket
    return OTHER


def bucket_samples(text: str, script: str = "inference.py") -> dict[int | None, Counter[str]]:
    """Samples per bucket of each thread (None: the output has no thread ids) in one py-spy raw output."""
    counts: dict[int | None, Counter[str]] = {}
    for thread, frames, count in parse_raw(text):
        counts.setdefault(thread, Counter())[classify(frames, script)] += count
    return counts


def attribute(samples: dict[int | None, Counter[str]], cpu_s: dict[int, float]) -> dict[str, float]:
    """CPU seconds per bucket: each thread's measured CPU (``cpu_s``, by OS thread id) split over its
    buckets in proportion to its samples; CPU of threads with no sample goes to NATIVE.

    Weighting by each thread's own CPU keeps a thread that was often runnable but waiting for a core
    (sampled, yet not running) from taking CPU that another thread spent.
    """
    out: dict[str, float] = {}
    for thread, seconds in cpu_s.items():
        counts = samples.get(thread)
        total = sum(counts.values()) if counts else 0
        if not counts or total == 0:
            out[NATIVE] = out.get(NATIVE, 0.0) + seconds
            continue
        for bucket, n in counts.items():
            out[bucket] = out.get(bucket, 0.0) + seconds * n / total
    return out


def top_stacks(texts: Iterable[str], bucket: str, n: int = 5, script: str = "inference.py") -> list[tuple[str, int]]:
    """The ``n`` commonest leaf frames (``function (file)``) among the stacks of ``bucket``: what to look at."""
    leaves: Counter[str] = Counter()
    for text in texts:
        for _, frames, count in parse_raw(text):
            if frames and classify(frames, script) == bucket:
                leaves[f"{frames[-1].function} ({frames[-1].path.rsplit('/', 2)[-1]})"] += count
    return leaves.most_common(n)
