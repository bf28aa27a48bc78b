"""The FastAPI peer: ``async def /invocations`` running the model directory's handler chain.

PEER_BASELINE's ``fastapi_uvicorn_w2``: the same ``code/inference.py`` the Flask peer serves
(``model_fn`` once per worker, then ``input_fn`` -> ``predict_fn`` -> ``output_fn``), called directly on
the event loop (the baseline measured that faster than a threadpool at concurrency 16). Run it with::

    BENCH_MODEL_DIR=/path/to/model uvicorn bench.peers.fastapi_app:app --workers 2 --no-access-log
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response

from bench.model import import_script

UTF8_CONTENT_TYPES = ("application/json", "text/csv")
DEFAULT_ACCEPT = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json")

_model_dir = Path(os.environ["BENCH_MODEL_DIR"])
user_module = import_script(_model_dir / "code" / os.environ.get("SAGEMAKER_PROGRAM", "inference.py"),
                            "bench_peer_inference")
model = user_module.model_fn(str(_model_dir))
app = FastAPI()


@app.get("/ping")
async def ping() -> Response:
    return Response(status_code=200)


@app.post("/invocations")
async def invocations(request: Request) -> Response:
    content_type = request.headers.get("content-type", "")
    accept = request.headers.get("accept") or DEFAULT_ACCEPT
    if accept == "*/*":
        accept = DEFAULT_ACCEPT
    body = await request.body()
    kind = content_type.split(";")[0].strip().lower()
    data: Any = body.decode("utf-8") if kind in UTF8_CONTENT_TYPES else body
    prediction = user_module.predict_fn(user_module.input_fn(data, content_type), model)
    result = user_module.output_fn(prediction, accept)
    content, media_type = result if isinstance(result, tuple) else (result, accept)
    return Response(content=content, status_code=200, media_type=media_type)
