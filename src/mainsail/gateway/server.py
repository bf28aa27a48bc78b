"""``mainsail up``'s server: assembles the control plane over one state directory and runs it.

``run_up`` builds the store, the local backend, the runtime router (over the backend's transport),
the reconciler (driven by the router's traffic), the batch transform runner and the control app,
serves it with uvicorn on one port, and on the way out stops them in order: transform jobs, then the
reconciler and every instance it started, then the store.
"""

from __future__ import annotations

import ipaddress
import logging
import signal

import uvicorn

from mainsail.aws.auth.credentials import KeyRing, load_credentials
from mainsail.backends.local import LocalBackend
from mainsail.connections import guarded_http_for, raise_open_files_limit
from mainsail.errors import MainsailError
from mainsail.gateway.app import create_control_app
from mainsail.hosting.reconciler import Reconciler
from mainsail.hosting.store import SQLiteStore
from mainsail.jobs.transform.runner import TransformRunner
from mainsail.routing.router import Router
from mainsail.settings import ControlSettings

logger = logging.getLogger(__name__)


class ExposureError(MainsailError):
    """``mainsail up`` would serve beyond loopback with nothing checking who calls."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the port on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond this machine


def secure_start(settings: ControlSettings) -> KeyRing | None:
    """The access keys to check (``None``: none configured), after the exposure rules: a bind beyond
    loopback needs credentials, or ``insecure`` (then a warning at every start); TLS needs both files."""
    keys = load_credentials(settings.credentials) if settings.credentials is not None else None
    if (settings.certfile is None) != (settings.keyfile is None):
        raise ExposureError("TLS needs both --certfile and --keyfile")
    for path in (settings.certfile, settings.keyfile):
        if path is not None and not path.is_file():
            raise ExposureError(f"cannot read the TLS file {path}")
    if not is_loopback(settings.host) and keys is None:
        if not settings.insecure:
            raise ExposureError(
                f"refusing to serve on {settings.host} without credentials: anyone who reaches the port could "
                "create, invoke and delete endpoints and read every object. Give --credentials FILE (or "
                "MAINSAIL_CREDENTIALS), bind to 127.0.0.1, or pass --insecure to accept the risk.")
        logger.warning("INSECURE: serving on %s without credentials (--insecure): any caller may do anything",
                       settings.host)
    return keys


def run_up(settings: ControlSettings) -> None:
    """Serve the SageMaker hosting, runtime, S3, Logs and STS APIs on ``settings.host:port`` until
    stopped, with state, models and logs under ``settings.home``; raises :class:`ExposureError` or
    :class:`~mainsail.aws.auth.credentials.CredentialsError` before anything starts."""
    keys = secure_start(settings)
    raise_open_files_limit()  # one descriptor per connection (and instances inherit it)
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
    scheme = "https" if settings.certfile else "http"
    logger.info("mainsail up: %s://%s:%d (state in %s; %s)", scheme, host, port, root,
                f"signed requests: {len(keys.keys)} key(s) from {keys.source}" if keys else "any signature accepted")
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in place
    # that re-raise returns here, so the instances are stopped and the exit code is 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        app = create_control_app(store, router, settings=settings, s3_root=root / "s3", keys=keys, freeze_start_up=True)
        uvicorn.run(app, host=host,
                    port=port, log_config=None, access_log=False, http=guarded_http_for(settings),
                    ssl_certfile=str(settings.certfile) if settings.certfile else None,
                    ssl_keyfile=str(settings.keyfile) if settings.keyfile else None)
    finally:
        # Instances do not outlive the control plane that owns them; the next `mainsail up` starts
        # them again (and adopts the ones a killed control plane left running).
        transforms.stop()
        reconciler.stop(stop_instances=True)
        store.close()
