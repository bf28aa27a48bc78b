"""What an instance's processes use, read from ``/proc`` (Linux; nothing elsewhere): CPU time and
memory of a process group, and how full the filesystem holding a path is.

A local instance is a process group (``mainsail serve`` starts a session: the group's id is the pid
the backend recorded), so one pass over ``/proc`` finds every instance's processes, workers included.
Memory is each process's proportional set size (``Pss`` of ``smaps_rollup``: pages shared by forked
workers counted once in all, as a container's memory counts them), else its resident set. CPU time is
``utime + stime`` of the live processes: a worker that exits takes its last ticks with it, so a period
in which workers come and go reads a little low, never high.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class GroupUsage:
    """One process group at one moment: its live processes' CPU seconds (by ``(pid, start tick)``,
    so a reused pid is another process) and their memory."""

    cpu: dict[tuple[int, int], float] = field(default_factory=dict)
    memory_bytes: int = 0


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100


def _memory(pid: str, resident_pages: int, page_size: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resident_pages * page_size


def group_usage(groups: set[int]) -> dict[int, GroupUsage] | None:
    """The usage of each process group in ``groups`` that has a live process (``None`` without ``/proc``)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    ticks = _clock_ticks()
    page_size = os.sysconf("SC_PAGE_SIZE")
    found: dict[int, GroupUsage] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            group = int(fields[2])  # fields after the command: state, ppid, pgrp, ...
            if group not in groups or fields[0] == b"Z":
                continue
            # utime, stime: fields 14 and 15 of stat(5); starttime 22; rss 24 (here 11, 12, 19, 21)
            cpu = (int(fields[11]) + int(fields[12])) / ticks
            started, resident = int(fields[19]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        usage = found.setdefault(group, GroupUsage())
        usage.cpu[(int(entry), started)] = cpu
        usage.memory_bytes += _memory(entry, resident, page_size)
    return found


def cpu_percent(before: GroupUsage, after: GroupUsage, seconds: float) -> float | None:
    """CPU use between two samples ``seconds`` apart, summed over cores (two busy cores: 200 %). Processes
    born between them count from zero; ``None`` when the interval is empty."""
    if seconds <= 0:
        return None
    used = sum(cpu - before.cpu.get(process, 0.0) for process, cpu in after.cpu.items())
    return max(used, 0.0) / seconds * 100.0


def disk_percent(path: str) -> float | None:
    """How full the filesystem holding ``path`` is, as ``df`` counts it (used / (used + available));
    ``None`` when it cannot be read."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    available = stats.f_bavail * stats.f_frsize
    return used / (used + available) * 100.0 if used + available > 0 else None
