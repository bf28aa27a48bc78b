"""The bare ASGI peer: the model directory's script behind a raw ASGI callable, nothing else.

No framework, routing, logging or metrics: ``POST /invocations`` runs ``input_fn`` -> ``predict_fn`` ->
``output_fn`` on the event loop and answers; ``GET /ping`` answers 200. It is the ceiling a Python
server on uvicorn + httptools + uvloop can reach with the same script (issue 14's "bare ASGI app").
Run it with::

    BENCH_MODEL_DIR=/path/to/model uvicorn bench.peers.bare_asgi:app --workers 2 --no-access-log \
        --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.model import import_script

UTF8_CONTENT_TYPES = (b"application/json", b"text/csv")
DEFAULT_ACCEPT = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json")

_model_dir = Path(os.environ["BENCH_MODEL_DIR"])
user_module = import_script(_model_dir / "code" / os.environ.get("SAGEMAKER_PROGRAM", "inference.py"),
                            "bench_bare_inference")
model = user_module.model_fn(str(_model_dir))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/ping":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = dict(scope["headers"])
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    content_type = headers.get(b"content-type", b"")
    accept = headers.get(b"accept", b"").decode() or DEFAULT_ACCEPT
    if accept == "*/*":
        accept = DEFAULT_ACCEPT
    data: Any = body.decode("utf-8") if content_type.split(b";")[0].strip().lower() in UTF8_CONTENT_TYPES else body
    prediction = user_module.predict_fn(user_module.input_fn(data, content_type.decode()), model)
    result = user_module.output_fn(prediction, accept)
    content, media_type = result if isinstance(result, tuple) else (result, accept)
    if isinstance(content, str):
        content = content.encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(content)).encode()), (b"content-type", media_type.encode())]})
    await send({"type": "http.response.body", "body": content})
