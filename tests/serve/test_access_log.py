"""The access log (``mainsail.serve.access_log``): the lines logging would write, written in batches,
none lost at shutdown; and the per-worker metrics merged across processes."""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from mainsail.log import LineFormatter
from mainsail.serve.access_log import FLUSH_S, MAX_PENDING, AccessLogWriter
from mainsail.serve.metrics import Metrics
from tests.conftest import ServerProcess, write_script

LINE = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[\d+\] mainsail\.access: '
                  r'127\.0\.0\.1:\d+ "POST /invocations" 200 \d+\.\d{3}ms$')


def detached_logger(stream: io.StringIO, *, through_logging: bool) -> logging.Logger:
    """A ``mainsail.access`` logger outside the global tree, writing to ``stream``."""
    logger = logging.Logger("mainsail.access", logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter())
    if through_logging:  # a filter anywhere makes the writer hand each line to logging
        handler.addFilter(lambda record: True)
    logger.addHandler(handler)
    return logger


def write(writer: AccessLogWriter, entries: Sequence[tuple[Any, str, str, int, float]]) -> None:
    for client, method, path, status, ms in entries:
        writer.add(client, method, path, status, ms)


ENTRIES = [(("127.0.0.1", 5001), "POST", "/invocations", 200, 0.8123),
           (None, "GET", "/ping", 200, 0.05),
           (("::1", 6000), "POST", "/invocations", 415, 12.3456)]


def test_batched_lines_are_the_lines_logging_writes() -> None:
    fast, slow = io.StringIO(), io.StringIO()
    writers = [AccessLogWriter(detached_logger(fast, through_logging=False)),
               AccessLogWriter(detached_logger(slow, through_logging=True))]
    entries = [(1_765_000_000.0 + i * 0.4567, *entry) for i, entry in enumerate(ENTRIES * 2)]
    for writer in writers:
        writer.write(entries)
    assert fast.getvalue() == slow.getvalue()
    lines = fast.getvalue().splitlines()
    assert len(lines) == 6
    assert lines[0].endswith(' mainsail.access: 127.0.0.1:5001 "POST /invocations" 200 0.812ms')
    assert lines[1].endswith(' mainsail.access: - "GET /ping" 200 0.050ms')


def test_without_a_running_loop_each_line_is_written_at_once() -> None:
    stream = io.StringIO()
    write(AccessLogWriter(detached_logger(stream, through_logging=False)), ENTRIES)
    assert len(stream.getvalue().splitlines()) == 3


def test_lines_wait_for_the_flush_interval_or_a_full_buffer() -> None:
    stream = io.StringIO()
    writer = AccessLogWriter(detached_logger(stream, through_logging=False))

    async def scenario() -> tuple[int, int, int]:
        write(writer, ENTRIES)
        before = len(stream.getvalue().splitlines())
        await asyncio.sleep(FLUSH_S * 2)
        after_interval = len(stream.getvalue().splitlines())
        write(writer, [ENTRIES[0]] * MAX_PENDING)
        return before, after_interval, len(stream.getvalue().splitlines())

    assert asyncio.run(scenario()) == (0, 3, 3 + MAX_PENDING)


def test_nothing_is_written_below_info() -> None:
    stream = io.StringIO()
    logger = detached_logger(stream, through_logging=False)
    logger.setLevel(logging.WARNING)
    write(AccessLogWriter(logger), ENTRIES)
    assert stream.getvalue() == ""


def test_every_request_has_its_line_after_a_sigterm(tmp_path: Path, home: Path) -> None:
    write_script(tmp_path, textwrap.dedent("""
        def model_fn(model_dir):
            return None
        def transform_fn(model, body, content_type, accept):
            return body, "text/plain"
    """))
    with ServerProcess([str(tmp_path), "--workers", "2"], home=home) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(40):
                assert client.post("/invocations", content=str(i).encode()).status_code == 200
        assert server.stop() == 0
        lines = [line for line in server.log().splitlines() if "mainsail.access" in line and "/invocations" in line]
    assert len(lines) == 40, server.log()[-2000:]
    assert all(LINE.match(line) for line in lines), lines[:3]


def _record_in_child(directory: str) -> None:
    metrics = Metrics(directory)
    for _ in range(3):
        metrics.record(200, 500.0, 800.0)
    metrics.record(503, None, 100.0)


def test_metrics_of_every_worker_process_add_up(tmp_path: Path) -> None:
    child = multiprocessing.get_context("fork").Process(target=_record_in_child, args=(str(tmp_path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    ours = Metrics(str(tmp_path))
    ours.record(404, 40.0, 90.0)
    ours.batch_size.observe(3)
    text = ours.render().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert values["Invocations_total"] == 5
    assert values["Invocation4XXErrors_total"] == 1
    assert values["Invocation5XXErrors_total"] == 1
    assert values["ModelLatency_count"] == 4
    assert values["ModelLatency_sum"] == 1540.0
    assert values['ModelLatency_bucket{le="500.0"}'] == 4  # cumulative, the bound inclusive
    assert values['ModelLatency_bucket{le="250.0"}'] == 1
    assert values['OverheadLatency_bucket{le="+Inf"}'] == 4
    assert values["BatchSize_count"] == 1
    assert values['BatchSize_bucket{le="2.0"}'] == 0 and values['BatchSize_bucket{le="4.0"}'] == 1
