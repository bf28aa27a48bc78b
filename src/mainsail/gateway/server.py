"""``mainsail up``'s server: assembles the control plane over one state directory and runs it.

``run_up`` builds the store, the local backend, the runtime router (over the backend's transport),
the reconciler (driven by the router's traffic), the batch transform runner and the control app,
serves it with uvicorn on one port, and on the way out stops them in order: transform jobs, then the
reconciler and every instance it started, then the store.
"""

from __future__ import annotations

import logging
import signal

import uvicorn

from mainsail.backends.local import LocalBackend
from mainsail.gateway.app import create_control_app
from mainsail.hosting.reconciler import Reconciler
from mainsail.hosting.store import SQLiteStore
from mainsail.jobs.transform.runner import TransformRunner
from mainsail.routing.router import Router
from mainsail.settings import ControlSettings

logger = logging.getLogger(__name__)


def run_up(settings: ControlSettings) -> None:
    """Serve the SageMaker hosting, runtime, S3, Logs and STS APIs on ``settings.host:port`` until
    stopped, with state, models and logs under ``settings.home``."""
    root = settings.home
    root.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(root / "state.db")
    backend = LocalBackend(root, max_model_bytes=settings.model_data_max_bytes, s3=settings.s3,
                           max_workers=settings.max_instance_workers)
    transport = backend.transport()
    if settings.instance_client == "aiohttp":
        # here: aiohttp (an optional dependency) is imported only when asked for
        from mainsail.backends.aiohttp_transport import AiohttpTransport

        transport = AiohttpTransport()
    router = Router(store, transport, async_idle=settings.async_idle_seconds, model_data=backend.model_data)
    reconciler = Reconciler(store, backend, traffic=router.traffic, serverless_idle=settings.serverless_idle_seconds,
                            async_idle=settings.async_idle_seconds)
    reconciler.start()
    transforms = TransformRunner(store, backend, root, s3=settings.s3)
    transforms.start()
    host, port = settings.host, settings.port
    logger.info("mainsail up: http://%s:%d (state in %s)", host, port, root)
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in place
    # that re-raise returns here, so the instances are stopped and the exit code is 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(create_control_app(store, router, settings=settings, s3_root=root / "s3"), host=host, port=port,
                    log_config=None, access_log=False)
    finally:
        # Instances do not outlive the control plane that owns them; the next `mainsail up` starts
        # them again (and adopts the ones a killed control plane left running).
        transforms.stop()
        reconciler.stop(stop_instances=True)
        store.close()
