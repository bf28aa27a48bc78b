"""A model loaded in this process: :class:`LocalModel` and :func:`load` (no server, no socket).

A :class:`LocalModel` drives the data plane's own ASGI app (the very route ``mainsail serve`` answers
``/invocations`` with), so an inference script can be unit-tested with the answers a deployed one
would give. The only client module that uses the serving stack, and only once :func:`load` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mainsail.client.bodies import Response, encode_body
from mainsail.client.errors import ModelInvocationError

if TYPE_CHECKING:
    from mainsail.serve.runtime import ModelRuntime
    from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _environ(environment: Mapping[str, str] | None) -> Iterator[None]:
    """``environment`` set in ``os.environ`` for the block, then the previous values restored."""
    if not environment:
        yield
        return
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update({str(k): str(v) for k, v in environment.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _LoopThread:
    """A private event loop in a daemon thread, so ``invoke`` works from sync and async callers alike."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mainsail-local", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class LocalModel:
    """A model loaded in this process behind the data plane's own app (no server, no socket).

    Build one with :func:`load`. :meth:`invoke` sends ``POST /invocations`` through the same ASGI
    app ``mainsail serve`` runs (payload limit, Accept defaults, handler chain, error bodies), so its
    status, body bytes and content type are what the server answers.
    """

    def __init__(self, runtime: ModelRuntime, settings: ServeSettings, app: Any, model_dir: Path,
                 script: Path | None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.model_dir = model_dir
        """The model directory (the extracted one for an archive)."""
        self.script = script
        """The inference script, or ``None`` for a built-in handler."""
        self._app = app
        self._loop: _LoopThread | None = _LoopThread()

    @property
    def handler(self) -> str:
        """The handler serving the model: ``script``, ``tabular``, ``pytorch``, ..."""
        return str(self.runtime.handler.name)

    def __repr__(self) -> str:
        return f"LocalModel({str(self.script or self.model_dir)!r}, handler={self.handler!r})"

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the predict threads and the private event loop (what the server does at shutdown)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self.runtime.close()
        loop.close()

    @property
    def closed(self) -> bool:
        return self._loop is None

    def request(self, method: str, path: str, body: bytes = b"",
                headers: Mapping[str, str] | None = None) -> Response:
        """Any request to the data plane's app (``/ping``, ``/execution-parameters``, ``/metrics`` ...)."""
        if self._loop is None:
            raise RuntimeError("this LocalModel is closed")
        status, out_headers, data = self._loop.run(self._call(method, path, body, dict(headers or {})))
        return Response(data, out_headers.get("content-type"), status=status,
                        custom_attributes=out_headers.get("x-amzn-sagemaker-custom-attributes"), headers=out_headers)

    async def _call(self, method: str, path: str, body: bytes,
                    headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        raw = [(b"host", b"localhost")]
        raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
        if method != "GET" or body:
            raw.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "headers": raw, "client": ("127.0.0.1", 0), "server": ("localhost", 8080),
            "state": {},
        }
        sent = False
        finished = asyncio.Event()
        status = 500
        out_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()  # the client stays connected until the response is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for key, value in message.get("headers", []):
                    name = key.decode("latin-1").lower()
                    text = value.decode("latin-1")
                    out_headers[name] = f"{out_headers[name]}, {text}" if name in out_headers else text
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    finished.set()

        try:
            await self._app(scope, receive, send)
        finally:
            finished.set()
        return status, out_headers, b"".join(chunks)

    def ping(self) -> bool:
        """``GET /ping`` answered 200 (the model is loaded)."""
        return self.request("GET", "/ping").status == 200

    def invoke(self, body: Any, content_type: str | None = None, accept: str | None = None,
               custom_attributes: str | None = None) -> Response:
        """``POST /invocations`` with ``body``; the answer exactly as ``mainsail serve`` gives it.

        ``body`` is encoded as :meth:`Endpoint.invoke` does (``bytes``/``str`` as they are, sent as
        ``application/json`` unless ``content_type`` says otherwise). An answer with a status of 400
        or more raises :class:`ModelInvocationError`: ``original_status_code`` is the status,
        ``original_message`` the JSON error body, ``response`` the whole answer.
        """
        payload, sent_type = encode_body(body, content_type)
        headers = {"content-type": sent_type}
        if accept is not None:
            headers["accept"] = accept
        if custom_attributes is not None:
            headers["x-amzn-sagemaker-custom-attributes"] = custom_attributes
        response = self.request("POST", "/invocations", payload, headers)
        if response.status >= 400:
            kind = "client" if response.status < 500 else "server"
            raise ModelInvocationError(
                f'Received {kind} error ({response.status}) from the model with message "{response.text}"',
                original_status_code=response.status, original_message=response.text, response=response)
        return response


def load(model_dir: str | os.PathLike[str], entry_point: str | None = None, *, source_dir: str | None = None,
         environment: Mapping[str, str] | None = None, framework: str | None = None) -> LocalModel:
    """Load a model in this process as one ``mainsail serve`` worker would; see :class:`LocalModel`.

    ``model_dir``: a model directory or ``model.tar.gz`` (extracted safely into
    ``$MAINSAIL_HOME/models``). ``entry_point``, ``source_dir``, ``framework``: as ``mainsail serve``'s
    options. ``environment``: the container environment (``SAGEMAKER_PROGRAM``,
    ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, your own variables ...), read for the settings and set in
    ``os.environ`` while the script is imported and ``model_fn`` runs, then restored. Raises
    ``ModelLoadError`` (a ``MainsailError``) when the model cannot load.
    """
    # The serving stack (starlette, the handlers, pydantic settings) is imported on the first load only:
    # `mainsail.load`, `from mainsail.client import ...` and the CLI's client commands stay cheap.
    from mainsail.handlers import build_handler
    from mainsail.handlers.gpus import gpu_for, set_worker_gpu
    from mainsail.serve.app import create_app
    from mainsail.serve.model_dir import prepare_model
    from mainsail.serve.requirements import imported_elsewhere, missing_requirements, prepare_requirements, put_first
    from mainsail.serve.runtime import ModelRuntime
    from mainsail.settings import ServeSettings

    given: dict[str, Any] = {"model_path": os.fspath(model_dir), "entry_point": entry_point,
                             "source_dir": source_dir, "framework": framework, "workers": 1}
    with _environ(environment):
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
        prepared = prepare_model(settings)
        # What run_server and the worker do before loading: code/requirements.txt, then sys.path.
        if prepared.code_dir is not None and (prepared.code_dir / "requirements.txt").is_file():
            requirements = prepared.code_dir / "requirements.txt"
            if settings.install_requirements:
                # In this process, not a worker of its own: the overlay goes first, but what the process has
                # imported already stays (said, not silently).
                paths = prepare_requirements(requirements, settings.home / "requirements").paths
                if imported := imported_elsewhere(paths):
                    logger.warning("%s pins %s, which this process has imported already: the imported version is "
                                   "used here (mainsail serve uses the pin)", requirements, ", ".join(imported))
                put_first(paths)
            elif missing := missing_requirements(requirements):
                logger.warning("%s is not satisfied (not installing, as asked): %s", requirements, "; ".join(missing))
        set_worker_gpu(gpu_for(settings.device, 0))  # this process is the one worker
        handler = build_handler(prepared.model_dir, prepared.script, framework=settings.framework,
                                model_name=settings.model_name, settings=settings)
        runtime = ModelRuntime.from_settings(handler, settings)
        try:
            runtime.load()
        except BaseException:
            runtime.close()
            raise
    app = create_app(runtime, settings, load_on_startup=False)
    return LocalModel(runtime, settings, app, prepared.model_dir, prepared.script)
