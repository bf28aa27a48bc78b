"""The peer: the Flask app SageMaker's scikit-learn container serves, reduced to what a request touches.

It mirrors ``sagemaker_containers``' serving worker: the model directory's ``code/inference.py`` is
imported once per worker, ``model_fn`` loads the model, ``/ping`` answers 200 with an empty body, and
``/invocations`` decodes a text body (JSON, CSV) to ``str``, resolves a missing or ``*/*`` Accept to the
default, runs ``input_fn`` -> ``predict_fn`` -> ``output_fn`` and answers the result with the returned
(or accepted) content type. Run it with gunicorn::

    BENCH_MODEL_DIR=/path/to/model gunicorn -k sync -w 2 -b 127.0.0.1:8080 bench.peers.flask_app:app
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import flask

UTF8_CONTENT_TYPES = ("application/json", "text/csv")
DEFAULT_ACCEPT = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json")


def _load(model_dir: Path) -> tuple[Any, Any]:
    script = model_dir / "code" / os.environ.get("SAGEMAKER_PROGRAM", "inference.py")
    spec = importlib.util.spec_from_file_location(script.stem, script)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.model_fn(str(model_dir))


user_module, model = _load(Path(os.environ["BENCH_MODEL_DIR"]))
app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping() -> flask.Response:
    return flask.Response(status=200)


@app.route("/invocations", methods=["POST"])
def invocations() -> flask.Response:
    request = flask.request
    content_type = request.headers.get("Content-Type", "")
    accept = request.headers.get("Accept") or DEFAULT_ACCEPT
    if accept == "*/*":
        accept = DEFAULT_ACCEPT
    data: Any = request.get_data()
    if content_type.split(";")[0].strip().lower() in UTF8_CONTENT_TYPES:
        data = data.decode("utf-8")
    features = user_module.input_fn(data, content_type)
    prediction = user_module.predict_fn(features, model)
    result = user_module.output_fn(prediction, accept)
    if isinstance(result, tuple):
        result, accept = result
    return flask.Response(response=result, status=200, mimetype=accept)
