"""N worker processes serving one port, supervised.

Each worker loads the model, then opens its *own* listening socket on the shared address with
``SO_REUSEPORT``, so the kernel spreads new connections evenly over the workers that can serve (a
shared accept queue lets one worker grab a whole burst of keep-alive connections and leave the other
idle). While no worker is serving (start-up, reload, all crashed) the supervisor holds a listener on
the address and answers every connection with 503, so ``/ping`` always tells the truth; it closes
that listener before it lets a loaded worker start. A worker that dies is replaced; SIGTERM drains
in-flight requests in every worker before the supervisor exits.

With preload (the default where it is safe, ``MAINSAIL_PRELOAD`` / ``--preload/--no-preload``) the
supervisor loads the model once, freezes the collector's view of it, and *forks* the workers, so
they share the model's pages copy-on-write instead of each holding a copy; a replacement is forked
from the same loaded model. ``mainsail.serve.preload`` decides per handler and library (ONNX Runtime
sessions, CUDA and reload mode fall back to loading in every worker, with one log line saying why);
see docs/workers.md. What runs inside a worker process is in ``mainsail.serve.worker_process``.
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

import orjson

from mainsail.errors import MainsailError
from mainsail.handlers.gpus import gpu_for, visible_gpus
from mainsail.serve.model_dir import PreparedModel
from mainsail.serve.preload import (
    AfterFork,
    loaded_preload_hazards,
    preload_safe,
    torch_threads,
    torch_threads_after_fork,
)
from mainsail.serve.reload import FileWatcher
from mainsail.serve.requirements import imported_elsewhere, put_first
from mainsail.serve.runtime import ModelRuntime
from mainsail.serve.worker_process import (
    EXIT_LOAD_FAILED,
    forked_worker_main,
    listen_socket,
    new_handler,
    new_runtime,
    worker_main,
)
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)

_NOT_READY_BODY = orjson.dumps({"error": "ModelNotReady", "message": "no worker has loaded the model yet"})


@dataclass
class Worker:
    process: BaseProcess
    loaded: Event
    go: Event
    generation: int
    slot: int = 0
    """Its place among the generation's workers: which GPU it serves on (``handlers.gpus``)."""
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
                 first_paths: list[str] | None = None) -> None:
        self.settings = settings
        self.prepared = prepared
        self.first_paths = list(first_paths or [])
        """Directories that go before the environment on the workers' ``sys.path`` (the requirements'
        overlay: its pins win)."""
        self._ctx = multiprocessing.get_context("spawn")
        self._fork_ctx = multiprocessing.get_context("fork")
        self.preloaded: ModelRuntime | None = None
        """The model loaded once by this process (preload), which the workers are forked from."""
        self.after_fork = AfterFork()
        """What each forked worker runs before it serves."""
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
        name = f"mainsail-worker-{self._generation}"
        used = {w.slot for w in self._workers if w.generation == self._generation and not w.retired}
        slot = next(i for i in range(len(used) + 1) if i not in used)
        if self.preloaded is not None:
            loaded, go = self._fork_ctx.Event(), self._fork_ctx.Event()
            process: BaseProcess = self._fork_ctx.Process(
                target=forked_worker_main, name=name, args=(self, loaded, go))
            # Hold the listener lock across fork: the child sees the 503 listener either open or
            # closed, never half-way, and closes its copy.
            with self._listener_lock:
                process.start()
        else:
            loaded, go = self._ctx.Event(), self._ctx.Event()
            process = self._ctx.Process(
                target=worker_main, name=name,
                args=(self.settings, self.prepared, self.first_paths, self.address, loaded, go,
                      gpu_for(self.settings.device, slot)),
            )
            # A spawned child takes this process's sys.path before it unpickles its arguments (which
            # imports mainsail, numpy ...): with the overlay first then, the child imports the pins only.
            saved = sys.path[:]
            put_first(self.first_paths)
            try:
                process.start()
            finally:
                sys.path[:] = saved
        worker = Worker(process, loaded, go, self._generation, slot)
        self._workers.append(worker)
        return worker

    def _preload(self) -> int | None:
        """Load the model here when that is safe (then workers fork). An exit code if loading failed."""
        if not self.settings.preload:
            logger.info("preload is off: each worker loads its own copy of the model")
            return None
        if self.settings.workers < 2:
            logger.info("one worker: nothing to share, so it loads the model itself (preload needs 2+ workers)")
            return None
        if gpu_for(self.settings.device, 0) is not None:
            logger.info("not preloading the model: each worker loads its own copy on its GPU (MAINSAIL_DEVICE=%s, "
                        "%d visible; context.system_properties['gpu_id']; MAINSAIL_DEVICE=cpu preloads)",
                        self.settings.device, visible_gpus())
            return None
        if imported := imported_elsewhere(self.first_paths):
            logger.info("not preloading the model, each worker loads its own copy: code/requirements.txt pins "
                        "%s, which this process has imported already", ", ".join(imported))
            return None
        put_first(self.first_paths)
        try:
            handler = new_handler(self.settings, self.prepared)
            safe, reason = preload_safe(handler, self.settings)
            if not safe:
                logger.warning("not preloading the model, each worker loads its own copy: %s", reason)
                return None
            runtime = new_runtime(handler, self.settings)
            runtime.load()
        except Exception as exc:
            message = exc.message if isinstance(exc, MainsailError) else f"{type(exc).__name__}: {exc}"
            logger.error("cannot serve: the model failed to load: %s", message,
                         exc_info=not isinstance(exc, MainsailError))
            return EXIT_LOAD_FAILED
        hazard = loaded_preload_hazards()
        if hazard is not None:
            logger.warning("not preloading the model, each worker loads its own copy: %s", hazard)
            runtime.close()
            del runtime, handler
            gc.collect()
            return None
        threads = torch_threads()
        if threads is not None:  # the count a fresh worker would have; set again in each child
            self.after_fork.add(torch_threads_after_fork(threads))
        # Objects alive now live as long as the workers: freezing them keeps the collector from
        # writing to their headers in the children (which would copy the shared pages).
        gc.collect()
        gc.freeze()
        self.preloaded = runtime
        logger.info("model loaded once by the supervisor (pid %d, %s); forking %d worker(s) that share it",
                    os.getpid(), reason, self.settings.workers)
        return None

    def _supervise(self) -> int:
        code = self._preload()
        if code is not None:
            return code
        if self._stop.is_set():
            return 0
        for _ in range(self.settings.workers):
            self._spawn()
        watcher = FileWatcher(self._watched_paths()) if self.settings.reload else None
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
                if not any(w.serving for w in self._workers):
                    # Answer 503 from now on, not only when the responder next looks: a forked
                    # replacement can be ready before then, and until it is nobody would listen.
                    self._ensure_listener()
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

    def drop_listener_after_fork(self) -> None:
        """In a forked worker: close this process's copy of the 503 listener (only this descriptor:
        the supervisor's socket stays open). Takes no lock: the parent held the listener lock across
        fork, so this copy of the listener is consistent, and its holder does not exist here."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _close_listener(self) -> None:
        # All under the lock, which a fork also holds: a forked worker must never inherit a listener
        # that ``self._listener`` no longer names (it could not close it, and the kernel would keep
        # routing connections to a socket that nobody accepts on).
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
