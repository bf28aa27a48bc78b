"""A SageMaker-style inference script around the built-in handler ``mainsail serve`` picks for a model.

``python -m bench suite`` copies this file to ``<peer dir>/code/inference.py`` (beside links to the
model's files) for the built-in models (tabular, PyTorch), so Flask + gunicorn and FastAPI + uvicorn run
exactly mainsail's handler, called once per request, and only the server around it differs.
"""

from pathlib import Path

from mainsail.handlers import build_handler
from mainsail.handlers.base import Handler, Invocation, Reply


def model_fn(model_dir: str) -> Handler:
    handler = build_handler(Path(model_dir), None)
    handler.load()
    return handler


def input_fn(request_body: str | bytes, request_content_type: str) -> tuple[bytes, str]:
    # The peers decode text bodies to str, as SageMaker's containers do; the handler takes bytes.
    body = request_body.encode("utf-8") if isinstance(request_body, str) else request_body
    return body, request_content_type


def predict_fn(input_data: tuple[bytes, str], handler: Handler) -> Reply:
    body, content_type = input_data
    return handler.invoke(Invocation(body, content_type, "application/json"))


def output_fn(reply: Reply, accept: str) -> tuple[bytes, str]:
    return reply.body, reply.content_type
