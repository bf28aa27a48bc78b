"""Server subprocesses for the benchmark: free ports, start, wait for ``/ping``, stop with SIGTERM."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS's pick for port 0, released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ping(host: str, port: int, timeout: float = 1.0) -> int | None:
    """The status of ``GET /ping`` on a fresh connection, or None when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass
class Server:
    """A running server subprocess; ``url`` is its base address."""

    name: str
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    argv: list[str] = field(default_factory=list)
    ready_s: float = 0.0
    stop_s: float | None = None
    exit_code: int | None = None

    @property
    def pids(self) -> list[int]:
        """The server's processes: it leads its own process group."""
        return group_pids(self.process.pid)

    def cpu_s(self) -> float:
        return sum(process_cpu_s(pid) for pid in self.pids)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (Linux ``/proc``; empty elsewhere)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (user, nice, system, irq, softirq)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def machine_steal_s() -> float:
    """CPU seconds the hypervisor gave this machine's virtual cores to other guests since boot (``steal``):
    time the cores were wanted here and ran elsewhere, counted neither busy nor idle."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return values[7] / _CLOCK_TICKS if len(values) > 7 else 0.0


def connections_by_pid(pids: list[int], port: int) -> list[int]:
    """How many established TCP connections to local ``port`` each of ``pids`` holds, largest first."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    counts = []
    for pid in pids:
        held = 0
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    held += 1
        except OSError:
            continue
        counts.append(held)
    return sorted(counts, reverse=True)


def wait_ready(server: Server, timeout_s: float) -> None:
    """Poll ``/ping`` until it answers 200; fail if the process dies or ``timeout_s`` passes."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(f"{server.name} exited with code {server.process.returncode} before it was "
                              f"ready; its log ends with:\n{server.log_tail()}")
        if ping(server.host, server.port, timeout=1.0) == 200:
            server.ready_s = time.monotonic() - started
            return
        time.sleep(0.05)
    raise ServerError(f"{server.name} did not answer /ping 200 within {timeout_s:.0f} s; its log ends "
                      f"with:\n{server.log_tail()}")


def stop(server: Server, grace_s: float = 20.0) -> None:
    """SIGTERM the server, wait up to ``grace_s``, then SIGKILL its whole process group."""
    process = server.process
    if process.poll() is None:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
            server.stop_s = time.monotonic() - started
        except subprocess.TimeoutExpired:
            pass
    # The server was started as the leader of its own process group; anything left in it is ours.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(5)
    server.exit_code = process.returncode


@contextmanager
def running(name: str, argv: Sequence[str], *, host: str, port: int, env: Mapping[str, str],
            cwd: Path | None = None, ready_timeout_s: float = 90.0) -> Iterator[Server]:
    """Start ``argv`` in a new session, wait until ``/ping`` is 200, and always stop it on exit."""
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
    log_path = Path(log.name)
    try:
        process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                   start_new_session=True)
    finally:
        log.close()
    server = Server(name, process, host, port, log_path, list(argv))
    try:
        wait_ready(server, ready_timeout_s)
        yield server
    finally:
        stop(server)
        log_path.unlink(missing_ok=True)
