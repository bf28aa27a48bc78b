"""``LocalBackend``: instances as ``mainsail serve`` process groups on loopback ports.

Each instance is ``python -m mainsail.cli serve`` in its own session, its model data resolved first
(:mod:`mainsail.backends.model_fetch`), its log under ``$MAINSAIL_HOME/logs/<endpoint>/``, its pid
recorded under ``$MAINSAIL_HOME/instances/`` so that a later control plane can adopt or reap it. It
runs the workers its spec asks for, at most ``max_workers`` (by default this host's cores:
:func:`workers_option`). The control plane reaches them through :meth:`LocalBackend.transport`, an
:class:`~mainsail.backends.http_transport.HttpTransport` (pooled keep-alive HTTP/1.1 on loopback).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from mainsail.backends.base import Instance, InstanceSpec, Transport, tail
from mainsail.backends.http_transport import HttpTransport
from mainsail.backends.model_fetch import NO_S3_ENDPOINT, resolve_environment, resolve_model_data
from mainsail.backends.model_sources import DEFAULT_MAX_BYTES, multi_model_prefix
from mainsail.settings import S3Access


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def workers_option(workers: int | None, max_workers: int | None = None) -> list[str]:
    """``mainsail serve``'s ``--workers`` for an instance asked to run ``workers`` processes: at most
    ``max_workers`` (``None``: this host's cores), at least one. None at all when ``workers`` is
    ``None``: the instance reads ``SAGEMAKER_MODEL_SERVER_WORKERS`` from its environment, uncapped,
    as the model asked."""
    if workers is None:
        return []
    limit = max_workers if max_workers is not None else os.cpu_count() or 1
    return ["--workers", str(max(1, min(workers, limit)))]


_LOAD_FAILURE = re.compile(r"model failed to load: (.+)$")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)(?::.*)?)$")


def why(log_path: str | Path) -> str:
    """One line saying why an instance stopped, from its log: the model's load error as mainsail
    serve logs it, else the last exception line of a traceback, else the last log lines."""
    text = tail(log_path, lines=60, max_chars=20_000)
    lines = text.splitlines()
    for line in reversed(lines):
        match = _LOAD_FAILURE.search(line)
        if match:
            return match.group(1).strip()[:900]
    for line in reversed(lines):
        match = _EXCEPTION.match(line.strip())
        if match:
            return match.group(1)[:900]
    return tail(log_path)


class LocalBackend:
    """Instances as ``mainsail serve`` subprocesses on loopback ports, each in its own session."""

    def __init__(self, home: Path, *, stop_timeout: float = 10.0, max_model_bytes: int = DEFAULT_MAX_BYTES,
                 s3: S3Access = NO_S3_ENDPOINT, max_workers: int | None = None) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1 (or None for this host's cores), not {max_workers}")
        self.home = home
        self.stop_timeout = stop_timeout
        #: the most worker processes an instance runs (None: this host's cores), unless its model's
        #: SAGEMAKER_MODEL_SERVER_WORKERS says otherwise
        self.max_workers = max_workers
        #: model data: at most this many bytes fetched or extracted; S3 reached as this says
        self.max_model_bytes = max_model_bytes
        self.s3 = s3
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._transport = HttpTransport()

    def transport(self) -> Transport:
        """The pooled loopback HTTP/1.1 client to the instances."""
        return self._transport

    def _model_dir(self, spec: InstanceSpec) -> Path:
        if multi_model_prefix(spec.model_data_url, spec.environment) is not None:
            # a multi-model endpoint: an empty models dir; the router loads target models on demand
            models = self.home / "multi-model" / spec.endpoint / f"{spec.variant}-{spec.index}"
            models.mkdir(parents=True, exist_ok=True)
            return models
        return resolve_model_data(spec.model_data_url, self.home, max_bytes=self.max_model_bytes, s3=self.s3)

    def model_data(self, url: str) -> str:
        """The local directory holding ``url``'s model data (fetched and extracted once, cached)."""
        return str(resolve_model_data(url, self.home, max_bytes=self.max_model_bytes, s3=self.s3))

    def start(self, spec: InstanceSpec) -> Instance:
        model_dir = self._model_dir(spec)
        port = free_port()
        logs = self.home / "logs" / spec.endpoint
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{spec.variant}-{spec.index}-{port}.log"
        # unbuffered: a print() in a user script reaches the log file (and CloudWatch Logs) at once
        # an instance inherits mainsail up's environment (as a container its image's), then the model's
        env = {**os.environ, "MAINSAIL_HOME": str(self.home), "PYTHONUNBUFFERED": "1",
               **resolve_environment(spec.environment, self.home, max_bytes=self.max_model_bytes, s3=self.s3)}
        multi = ["--multi-model"] if multi_model_prefix(spec.model_data_url, spec.environment) is not None else []
        cmd = [sys.executable, "-m", "mainsail.cli", "serve", *multi, str(model_dir), "--port", str(port),
               *workers_option(spec.workers, self.max_workers), "--host", "127.0.0.1"]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with self._lock:
            self._procs[proc.pid] = proc
        self._pid_dir.mkdir(parents=True, exist_ok=True)
        (self._pid_dir / f"{proc.pid}.json").write_text(json.dumps({"pid": proc.pid, "port": port}))
        return Instance(variant=spec.variant, pid=proc.pid, port=port, log_path=str(log_path),
                        model_dir=str(model_dir))

    def _exit_code(self, pid: int) -> int | None:
        """The exit code, ``None`` while running; -1 when the process is unknown and gone."""
        with self._lock:
            proc = self._procs.get(pid)
        if proc is not None:
            return proc.poll()
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            return None
        return None

    def healthy(self, instance: Instance) -> bool:
        return self._transport.ping(instance.address, timeout=1.0)

    def failure(self, instance: Instance) -> str | None:
        code = self._exit_code(instance.pid)
        if code is None:
            return None
        return f"Instance of variant {instance.variant} exited with code {code}: {why(instance.log_path)}"

    def stop(self, instance: Instance) -> None:
        with self._lock:
            ours = instance.pid in self._procs
        if not ours and not self._is_instance(instance.pid, instance.port):
            (self._pid_dir / f"{instance.pid}.json").unlink(missing_ok=True)
            return  # gone, or its pid now belongs to another process: never signal that
        if self._exit_code(instance.pid) is None:
            try:
                os.killpg(instance.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + self.stop_timeout
            while self._exit_code(instance.pid) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        try:  # the group may still hold workers even after the leader exited
            os.killpg(instance.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        with self._lock:
            proc = self._procs.pop(instance.pid, None)
        if proc is not None:
            proc.wait(5)
        (self._pid_dir / f"{instance.pid}.json").unlink(missing_ok=True)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # let the group's last members die
            try:
                os.killpg(instance.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.02)

    @property
    def _pid_dir(self) -> Path:
        return self.home / "instances"

    @staticmethod
    def _is_instance(pid: int, port: int) -> bool:
        """Whether ``pid`` runs and is a ``mainsail serve`` on ``port`` (pids are reused)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                return False
            return True  # no /proc (macOS): trust the pid
        return b"mainsail.cli" in argv and b"serve" in argv and str(port).encode() in argv

    def adopt(self, instance: Instance) -> bool:
        return self._is_instance(instance.pid, instance.port)

    def memory_bytes(self, instance: Instance) -> int | None:
        """The summed RSS of the instance's process group, from /proc (``None`` without /proc)."""
        total, found = 0, False
        try:
            entries = os.listdir("/proc")
        except OSError:
            return None
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[2]) != instance.pid:  # the process group (pgid) field
                    continue
                with open(f"/proc/{entry}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                found = True
            except (OSError, IndexError, ValueError):
                continue
        return total if found else None

    def reap(self, known: set[int]) -> list[int]:
        stopped = []
        for path in sorted(self._pid_dir.glob("*.json")) if self._pid_dir.is_dir() else []:
            try:
                info = json.loads(path.read_text())
                pid, port = int(info["pid"]), int(info["port"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if pid in known:
                continue
            if self._is_instance(pid, port):
                self.stop(Instance(variant="", pid=pid, port=port, log_path=""))
                stopped.append(pid)
            path.unlink(missing_ok=True)
        return stopped

    def stop_all(self) -> None:
        """Stop every process this backend started (teardown)."""
        with self._lock:
            pids = list(self._procs)
        for pid in pids:
            self.stop(Instance(variant="", pid=pid, port=0, log_path=""))
