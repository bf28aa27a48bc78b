"""What the held-connection tests of both planes check (``bench.held_connections`` holds them): 10,000
connections, half idle, a quarter slowloris, a quarter slow body, held against a real server whose head
timeout is :data:`HEAD_TIMEOUT`, while good requests run."""

from __future__ import annotations

import asyncio

from bench.held_connections import HoldResult, Probe, Target, hold

COUNTS = {"idle": 5000, "slowloris": 2500, "slow-body": 2500}
HEAD_TIMEOUT = 8
"""The servers' ``MAINSAIL_REQUEST_HEAD_TIMEOUT``: longer than opening 10,000 connections takes here
(about 3.5 s), so all are open at once before the first is closed."""
HOLD_S = HEAD_TIMEOUT + 8
"""Past the head timeout (and a slow body's grace), plus the time to open them and sweep."""
SLOW_MS = 2000
"""The longest a good request may take while the connections are held (it takes ~10 ms)."""
RSS_GROWTH_MIB = 300
"""How much the server's memory may grow holding them (~90 MiB measured: docs/reliability.md)."""


def hold_and_check(name: str, target: Target, pid: int, probes: list[Probe], *, root_only: bool = False) -> HoldResult:
    """Hold :data:`COUNTS` against ``target`` for :data:`HOLD_S` and assert: every good request answered
    200 within :data:`SLOW_MS`; memory grew less than :data:`RSS_GROWTH_MIB`; the server closed every held
    connection itself (408 for those that had sent part of a request); its descriptors came back."""
    result = asyncio.run(hold(name, target, pid, COUNTS, probes, hold_s=HOLD_S))
    summary = f"{result}"
    assert result.opened == COUNTS, summary
    before, during = (result.root_before, result.root_during) if root_only else (result.before, result.during)
    assert during.fds > before.fds + sum(COUNTS.values()) // 2, summary  # they were held at once
    for probe in result.probes:
        assert probe.statuses == {200: len(probe.latencies_ms)} and probe.ok >= 20, (probe.name, probe.errors[:3])
        assert max(probe.latencies_ms) < SLOW_MS, (probe.name, sorted(probe.latencies_ms)[-5:])
    assert during.rss_mib - before.rss_mib < RSS_GROWTH_MIB, summary
    assert result.still_open == dict.fromkeys(COUNTS, 0), summary
    for mode in ("slowloris", "slow-body"):
        assert result.answered[mode] == {"HTTP/1.1 408 Request Timeout": COUNTS[mode]}, summary
    assert result.closed_after_s is not None, summary  # descriptors back near the baseline
    return result
