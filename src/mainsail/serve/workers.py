"""N worker processes serving one port, supervised.

Each worker loads the model, then opens its *own* listening socket on the shared address with
``SO_REUSEPORT``, so the kernel spreads new connections evenly over the workers that can serve (a
shared accept queue lets one worker grab a whole burst of keep-alive connections and leave the other
idle). While no worker is serving (start-up, reload, all crashed) the supervisor holds a listener on
the address and answers every connection with 503, so ``/ping`` always tells the truth; it closes
that listener before it lets a loaded worker start. A worker that dies is replaced; SIGTERM drains
in-flight requests in every worker before the supervisor exits.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from mainsail.serve.model_dir import PreparedModel
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 3
_NOT_READY_BODY = orjson.dumps({"error": "ModelNotReady", "message": "no worker has loaded the model yet"})


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``(host, port)`` that other processes of this user can share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def worker_main(settings: ServeSettings, prepared: PreparedModel, extra_paths: list[str],
                address: tuple[str, int], loaded: Event, go: Event) -> None:
    """Entry point of one worker process: load, listen, then serve until SIGTERM.

    After loading it opens its listener (connections queue there), signals ``loaded`` and waits for
    ``go``: the supervisor first stops answering 503 itself.
    """
    import uvicorn

    from mainsail.errors import MainsailError
    from mainsail.handlers import build_handler
    from mainsail.log import configure_logging
    from mainsail.serve.app import create_app
    from mainsail.serve.runtime import ModelRuntime

    configure_logging(settings.log_level)
    sys.path.extend(p for p in extra_paths if p not in sys.path)
    try:
        handler = build_handler(prepared.model_dir, prepared.script, framework=settings.framework,
                                model_name=settings.model_name, settings=settings)
        runtime = ModelRuntime(handler, timeout_s=settings.timeout, threads=settings.predict_threads)
        runtime.load()
    except MainsailError as exc:
        logger.error("worker %d cannot serve: %s", os.getpid(), exc.message)
        sys.exit(EXIT_LOAD_FAILED)
    # What is alive now (modules, the model) lives as long as the worker: keep it out of the
    # collector's generations, so full collections stay short and do not stall requests.
    gc.collect()
    gc.freeze()
    sock = listen_socket(*address)
    loaded.set()
    while not go.wait(1.0):
        if os.getppid() == 1:  # the supervisor is gone
            sys.exit(0)
    app = create_app(runtime, settings, load_on_startup=False)
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", lifespan="on", access_log=False, log_config=None,
        timeout_keep_alive=75, timeout_graceful_shutdown=int(settings.timeout) + 5,
    )

    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class Worker:
    process: BaseProcess
    loaded: Event
    go: Event
    generation: int
    started: float = field(default_factory=time.monotonic)
    retired: bool = False
    """Told to stop (reload): its exit is expected, not a crash to replace."""

    @property
    def serving(self) -> bool:
        """Accepting connections, or about to (it was told to go)."""
        return self.go.is_set() and self.process.is_alive()


class Supervisor:
    """Starts, watches, replaces and stops the workers of one ``mainsail serve``."""

    def __init__(self, settings: ServeSettings, prepared: PreparedModel,
                 extra_paths: list[str] | None = None) -> None:
        self.settings = settings
        self.prepared = prepared
        self.extra_paths = list(extra_paths or [])
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[Worker] = []
        self._stop = threading.Event()
        self._generation = 0
        self._listener: socket.socket | None = None
        self._listener_lock = threading.Lock()
        self.address: tuple[str, int] = (settings.host, settings.port)

    # -- life cycle -------------------------------------------------------------------------
    def run(self) -> int:
        self._listener = listen_socket(self.settings.host, self.settings.port)
        host, port = self._listener.getsockname()[:2]
        self.address = (self.settings.host, port)
        metrics_dir = tempfile.mkdtemp(prefix="mainsail-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        responder = threading.Thread(target=self._answer_while_unready, name="mainsail-503", daemon=True)
        responder.start()
        logger.info("mainsail serving %s on http://%s:%d with %d worker(s)",
                    self.prepared.script or self.prepared.model_dir, host, port, self.settings.workers)
        try:
            code = self._supervise()
        finally:
            self._shutdown()
            shutil.rmtree(metrics_dir, ignore_errors=True)
            self._close_listener()
        return code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: draining in-flight requests", signal.Signals(signum).name)
        self._stop.set()

    def _spawn(self) -> Worker:
        loaded, go = self._ctx.Event(), self._ctx.Event()
        process = self._ctx.Process(
            target=worker_main, name=f"mainsail-worker-{self._generation}",
            args=(self.settings, self.prepared, self.extra_paths, self.address, loaded, go),
        )
        process.start()
        worker = Worker(process, loaded, go, self._generation)
        self._workers.append(worker)
        return worker

    def _supervise(self) -> int:
        for _ in range(self.settings.workers):
            self._spawn()
        watcher = _FileWatcher(self._watched_paths()) if self.settings.reload else None
        fast_deaths = 0
        while not self._stop.is_set():
            sentinels = [w.process.sentinel for w in self._workers]
            if sentinels:
                multiprocessing.connection.wait(sentinels, timeout=0.5)
            else:
                self._stop.wait(0.5)
            if self._stop.is_set():
                break
            for worker in [w for w in self._workers if not w.process.is_alive()]:
                self._workers.remove(worker)
                self._forget(worker)
                code = worker.process.exitcode
                if worker.retired:
                    continue
                if code == EXIT_LOAD_FAILED:
                    logger.error("worker pid %s could not load the model", worker.process.pid)
                    continue
                lived = time.monotonic() - worker.started
                fast_deaths = fast_deaths + 1 if lived < 5 else 0
                logger.warning("worker pid %s died (exit code %s); starting a replacement",
                               worker.process.pid, code)
                if fast_deaths > 3:
                    self._stop.wait(min(2 ** (fast_deaths - 3), 30))
                self._spawn()
            if not self._workers and not self.settings.reload:
                logger.error("no worker could load the model; exiting")
                return EXIT_LOAD_FAILED
            if watcher is not None and watcher.changed():
                self._reload()
        return 0

    def _reload(self) -> None:
        logger.info("files changed: restarting the workers")
        old = list(self._workers)
        self._generation += 1
        for _ in range(self.settings.workers):
            self._spawn()
        for worker in old:
            worker.retired = True
            if worker.process.is_alive() and worker.process.pid:
                os.kill(worker.process.pid, signal.SIGTERM)

    def _forget(self, worker: Worker) -> None:
        if worker.process.pid is None:
            return
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.process.pid)  # type: ignore[no-untyped-call]
        except Exception:  # pragma: no cover - metrics cleanup must never stop supervision
            logger.debug("could not mark pid %s dead for metrics", worker.process.pid, exc_info=True)

    def _shutdown(self) -> None:
        for worker in self._workers:
            if worker.process.is_alive() and worker.process.pid:
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.timeout + 10
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                logger.warning("worker pid %s did not drain in time; killing it", worker.process.pid)
                worker.process.kill()
                worker.process.join(5)
        self._workers.clear()

    def _watched_paths(self) -> list[Path]:
        paths = [self.prepared.model_dir]
        if self.prepared.code_dir is not None:
            paths.append(self.prepared.code_dir)
        model_arg = Path(self.settings.model_path.removeprefix("file://"))
        if model_arg.is_file():
            paths.append(model_arg)
        return paths

    # -- the 503 responder ------------------------------------------------------------------
    def _answer_while_unready(self) -> None:
        while not self._stop.is_set():
            workers = list(self._workers)
            loaded = [w for w in workers if w.loaded.is_set() and not w.go.is_set()]
            if loaded:
                # Only this thread accepts in the supervisor: once its listener is closed, every
                # new connection goes to a worker that has the model.
                self._close_listener()
                for worker in loaded:
                    worker.go.set()
            if any(w.serving for w in workers):
                self._stop.wait(0.02)
                continue
            listener = self._ensure_listener()
            if listener is None:
                self._stop.wait(0.2)
                continue
            try:
                readable, _, _ = select.select([listener], [], [], 0.02)
                if readable:
                    conn, _ = listener.accept()
                    threading.Thread(target=_answer_503, args=(conn,), daemon=True).start()
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError):
                if self._stop.is_set():
                    return

    def _ensure_listener(self) -> socket.socket | None:
        with self._listener_lock:
            if self._listener is None:
                try:
                    self._listener = listen_socket(*self.address)
                except OSError as exc:
                    logger.error("cannot listen on %s:%d: %s", *self.address, exc)
            return self._listener

    def _close_listener(self) -> None:
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is None:
            return
        # Answer what already waits in its queue (closing would reset those connections).
        listener.setblocking(False)
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                break
            conn.setblocking(True)
            threading.Thread(target=_answer_503, args=(conn,), daemon=True).start()
        listener.close()


def _answer_503(conn: socket.socket) -> None:
    try:
        conn.settimeout(2.0)
        received = b""
        while b"\r\n\r\n" not in received and len(received) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            received += chunk
        conn.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(_NOT_READY_BODY)).encode() + b"\r\nconnection: close\r\n\r\n"
            + _NOT_READY_BODY
        )
    except OSError:
        pass
    finally:
        conn.close()


class _FileWatcher:
    """Polls modification times; cheap enough for the development ``--reload`` mode."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self._last = self._snapshot()

    def _snapshot(self) -> Any:
        state: dict[str, float] = {}
        for root in self.roots:
            if root.is_file():
                state[str(root)] = root.stat().st_mtime
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    try:
                        state[path] = os.stat(path).st_mtime
                    except OSError:
                        continue
        return state

    def changed(self) -> bool:
        current = self._snapshot()
        if current != self._last:
            self._last = current
            return True
        return False
