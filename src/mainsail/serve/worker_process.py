"""One worker process of ``mainsail serve``: load the model (or take the one the supervisor
preloaded before it forked), open its own listener on the shared address, wait for the supervisor's
go, then serve until SIGTERM. The supervisor that starts these is in ``mainsail.serve.workers``.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING

from mainsail.connections import guarded_http_for
from mainsail.errors import MainsailError
from mainsail.handlers import build_handler
from mainsail.handlers.base import Handler
from mainsail.handlers.gpus import set_worker_gpu
from mainsail.log import configure_logging
from mainsail.serve.model_dir import PreparedModel
from mainsail.serve.requirements import put_first
from mainsail.serve.runtime import ModelRuntime
from mainsail.settings import ServeSettings

if TYPE_CHECKING:
    from mainsail.serve.workers import Supervisor

logger = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 3


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


def new_handler(settings: ServeSettings, prepared: PreparedModel) -> Handler:
    """The model's handler, built (not loaded) as ``settings`` say."""
    return build_handler(prepared.model_dir, prepared.script, framework=settings.framework,
                         model_name=settings.model_name, settings=settings)


def new_runtime(handler: Handler, settings: ServeSettings) -> ModelRuntime:
    """The runtime that serves ``handler`` (not loaded yet)."""
    return ModelRuntime.from_settings(handler, settings)


def worker_main(settings: ServeSettings, prepared: PreparedModel, first_paths: list[str],
                address: tuple[str, int], loaded: Event, go: Event, gpu_id: int | None = None) -> None:
    """Entry point of one (spawned) worker process: load, listen, then serve until SIGTERM.

    After loading it opens its listener (connections queue there), signals ``loaded`` and waits for
    ``go``: the supervisor first stops answering 503 itself.
    """
    configure_logging(settings.log_level)
    put_first(first_paths)  # already there (the supervisor spawned it so): kept first
    set_worker_gpu(gpu_id)
    try:
        runtime = new_runtime(new_handler(settings, prepared), settings)
        runtime.load()
    except MainsailError as exc:
        logger.error("worker %d cannot serve: %s", os.getpid(), exc.message)
        sys.exit(EXIT_LOAD_FAILED)
    serve(runtime, settings, address, loaded, go)


def forked_worker_main(supervisor: Supervisor, loaded: Event, go: Event) -> None:
    """Entry point of a worker forked from a supervisor that holds the loaded model (preload).

    Only the forking thread lives on in the child: the supervisor's 503 responder is gone, so the
    child drops the supervisor's listener and signal handlers before it serves the shared runtime.
    """
    supervisor.drop_listener_after_fork()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # prometheus-client picks its value class (multiprocess or not) when first imported: the
    # supervisor may have imported it before it set PROMETHEUS_MULTIPROC_DIR, a spawned worker never.
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    runtime = supervisor.preloaded
    assert runtime is not None
    supervisor.after_fork.run()
    serve(runtime, supervisor.settings, supervisor.address, loaded, go)


def serve(runtime: ModelRuntime, settings: ServeSettings, address: tuple[str, int],
          loaded: Event, go: Event) -> None:
    """Listen on ``address``, say ``loaded``, wait for ``go``, then serve ``runtime`` until SIGTERM."""
    import uvicorn

    # Imported here, in the worker process only: the supervisor never serves through Starlette, and
    # importing the app there would add its start-up cost (~85 ms) to every start.
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
        app, loop="uvloop", http=guarded_http_for(settings), lifespan="on", access_log=False, log_config=None,
        timeout_keep_alive=75, timeout_graceful_shutdown=int(settings.timeout) + 5,
    )

    uvicorn.Server(config).run(sockets=[sock])
