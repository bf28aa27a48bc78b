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
from the same loaded model. ``preload_safe`` decides per handler and library (ONNX Runtime sessions,
CUDA and reload mode fall back to loading in every worker, with one log line saying why); see
docs/workers.md.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson

from mainsail.handlers.base import Handler
from mainsail.serve.model_dir import PreparedModel
from mainsail.settings import ServeSettings

if TYPE_CHECKING:
    from mainsail.serve.runtime import ModelRuntime

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


def _build_handler(settings: ServeSettings, prepared: PreparedModel) -> Handler:
    from mainsail.handlers import build_handler

    return build_handler(prepared.model_dir, prepared.script, framework=settings.framework,
                         model_name=settings.model_name, settings=settings)


def _new_runtime(handler: Handler, settings: ServeSettings) -> ModelRuntime:
    from mainsail.serve.runtime import ModelRuntime

    return ModelRuntime.from_settings(handler, settings)


def worker_main(settings: ServeSettings, prepared: PreparedModel, extra_paths: list[str],
                address: tuple[str, int], loaded: Event, go: Event) -> None:
    """Entry point of one (spawned) worker process: load, listen, then serve until SIGTERM.

    After loading it opens its listener (connections queue there), signals ``loaded`` and waits for
    ``go``: the supervisor first stops answering 503 itself.
    """
    from mainsail.errors import MainsailError
    from mainsail.log import configure_logging

    configure_logging(settings.log_level)
    sys.path.extend(p for p in extra_paths if p not in sys.path)
    try:
        runtime = _new_runtime(_build_handler(settings, prepared), settings)
        runtime.load()
    except MainsailError as exc:
        logger.error("worker %d cannot serve: %s", os.getpid(), exc.message)
        sys.exit(EXIT_LOAD_FAILED)
    _serve(runtime, settings, address, loaded, go)


def forked_worker_main(supervisor: Supervisor, loaded: Event, go: Event) -> None:
    """Entry point of a worker forked from a supervisor that holds the loaded model (preload).

    Only the forking thread lives on in the child: the supervisor's 503 responder is gone, so the
    child drops the supervisor's listener and signal handlers before it serves the shared runtime.
    """
    # The parent held the listener lock across fork, so this copy of the listener is consistent.
    listener, supervisor._listener = supervisor._listener, None
    if listener is not None:
        listener.close()  # only this process's descriptor: the supervisor's socket stays open
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # prometheus-client picks its value class (multiprocess or not) when first imported: the
    # supervisor may have imported it before it set PROMETHEUS_MULTIPROC_DIR, a spawned worker never.
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    runtime = supervisor.preloaded
    assert runtime is not None
    for hook in _AFTER_FORK:
        hook()
    _serve(runtime, supervisor.settings, supervisor.address, loaded, go)


def _serve(runtime: ModelRuntime, settings: ServeSettings, address: tuple[str, int],
           loaded: Event, go: Event) -> None:
    import uvicorn

    from mainsail.serve.app import create_app

    # What is alive now (modules, the model) lives as long as the worker: keep it out of the
    # collector's generations, so full collections stay short and do not stall requests (and, after
    # a fork, do not write to the shared pages).
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


# -- preload: which models may be loaded once and forked -------------------------------------------
# Why forking after a load is safe for the libraries that pass: every request runs in the worker's
# predict threads, which are created after the fork. OpenMP (libgomp, used by torch's intra-op pool,
# XGBoost and LightGBM) keeps its thread team per master thread, so a team the supervisor's main
# thread might have started is never reused by those fresh threads; the supervisor itself runs no
# request. OpenBLAS (numpy, scipy) shuts its pool down around fork on its own. What does not survive:
# an ONNX Runtime InferenceSession (its thread pool is created with the session, and those threads
# are gone in the child) and an initialised CUDA context.

PreloadCheck = Callable[[Handler, ServeSettings], "tuple[bool, str]"]
_PRELOAD_CHECKS: dict[str, PreloadCheck] = {}
_AFTER_FORK: list[Callable[[], None]] = []
"""Run in each forked worker before it serves (e.g. torch's thread count)."""

_UNFORKABLE_MODULES = {
    "onnxruntime": "ONNX Runtime's session thread pools do not survive fork",
    "tensorflow": "TensorFlow's runtime threads do not survive fork",
    "jax": "JAX's runtime threads do not survive fork",
}


def register_preload_check(handler_name: str, check: PreloadCheck) -> None:
    """Say whether handlers named ``handler_name`` (``Handler.name``) may be loaded once and forked."""
    _PRELOAD_CHECKS[handler_name] = check


def preload_safe(handler: Handler, settings: ServeSettings) -> tuple[bool, str]:
    """Whether ``handler`` (built, not loaded) may be loaded in the supervisor and forked; and why."""
    if not settings.preload:
        return False, "preload is turned off (MAINSAIL_PRELOAD=false / --no-preload)"
    if settings.reload:
        return False, "--reload restarts the workers to re-read changed files, so each loads its own copy"
    if settings.workers < 2:
        return False, "one worker: nothing to share"
    check = _PRELOAD_CHECKS.get(getattr(handler, "name", ""))
    if check is None:
        return False, f"the {getattr(handler, 'name', type(handler).__name__)!r} handler is not known to be fork-safe"
    return check(handler, settings)


def loaded_preload_hazards() -> str | None:
    """After the supervisor's load: a reason not to fork (a library the model pulled in), or None."""
    for module, reason in _UNFORKABLE_MODULES.items():
        if module in sys.modules:
            return f"the model imported {module}: {reason}"
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_initialized():
            return "the model initialised CUDA, which cannot be used in a forked process"
    return None


def _always(reason: str) -> PreloadCheck:
    def check(handler: Handler, settings: ServeSettings) -> tuple[bool, str]:
        return True, reason
    return check


def _pytorch_check(handler: Handler, settings: ServeSettings) -> tuple[bool, str]:
    model_dir: Path | None = getattr(handler, "model_dir", None)
    use_onnx: bool | None = getattr(handler, "use_onnx", None)
    if model_dir is None:
        return False, "the handler does not say where its model is"
    if (model_dir / "model.onnx").is_file() if use_onnx is None else use_onnx:
        return False, ("it serves model.onnx, and an ONNX Runtime session's thread pool does not survive "
                       "fork (MAINSAIL_USE_ONNX=false serves model.pth, preloaded)")
    device = str(getattr(handler, "device", "auto"))
    if device.startswith("cuda"):
        return False, "the network runs on CUDA, which cannot be used in a forked process"
    if device == "auto":
        import torch

        if torch.version.cuda is not None and torch.cuda.is_available():
            return False, ("a GPU is available and the network would run there; CUDA cannot be used in "
                           "a forked process (--device cpu / MAINSAIL_DEVICE=cpu preloads)")
    return True, "a torch CPU network: weights are shared, inference runs in threads started after fork"


register_preload_check("script", _always("a user script: checked again after model_fn for libraries that cannot fork"))
register_preload_check("tabular", _always(
    "XGBoost, LightGBM and scikit-learn models predict in threads started after fork"))
register_preload_check("xgboost-algorithm", _always("an XGBoost booster predicts in threads started after fork"))
register_preload_check("pytorch-multimodal", _pytorch_check)


def _torch_threads_after_fork(threads: int) -> Callable[[], None]:
    def hook() -> None:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)
    return hook


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
        self._fork_ctx = multiprocessing.get_context("fork")
        self.preloaded: ModelRuntime | None = None
        """The model loaded once by this process (preload), which the workers are forked from."""
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
                args=(self.settings, self.prepared, self.extra_paths, self.address, loaded, go),
            )
            process.start()
        worker = Worker(process, loaded, go, self._generation)
        self._workers.append(worker)
        return worker

    def _preload(self) -> int | None:
        """Load the model here when that is safe (then workers fork). An exit code if loading failed."""
        from mainsail.errors import MainsailError

        if not self.settings.preload:
            logger.info("preload is off: each worker loads its own copy of the model")
            return None
        if self.settings.workers < 2:
            logger.info("one worker: nothing to share, so it loads the model itself (preload needs 2+ workers)")
            return None
        sys.path.extend(p for p in self.extra_paths if p not in sys.path)
        try:
            handler = _build_handler(self.settings, self.prepared)
            safe, reason = preload_safe(handler, self.settings)
            if not safe:
                logger.warning("not preloading the model, each worker loads its own copy: %s", reason)
                return None
            runtime = _new_runtime(handler, self.settings)
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
        torch_threads = _torch_threads()
        if torch_threads is not None:  # the count a fresh worker would have; set again in each child
            _AFTER_FORK.append(_torch_threads_after_fork(torch_threads))
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


def _torch_threads() -> int | None:
    """torch's intra-op thread count when torch is loaded (read before the model runs anything)."""
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


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
