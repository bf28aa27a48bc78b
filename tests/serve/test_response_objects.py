"""A response object returned by ``output_fn`` or ``transform_fn`` is the HTTP response, as in the
scikit-learn and XGBoost containers (where Flask sends a ``worker.Response``, a werkzeug
``Response``, as it is): its status, content type, headers and body. Over real HTTP."""

from __future__ import annotations

from pathlib import Path

from mainsail.handlers.script import ScriptHandler
from tests.conftest import live_app, write_script

WERKZEUG_SCRIPT = '''
import json

from werkzeug.wrappers import Response


def model_fn(model_dir):
    return sum


def input_fn(body, content_type):
    return [float(x) for x in body.split(",")]


def predict_fn(data, model):
    return model(data)


def output_fn(prediction, accept):
    if prediction < 0:
        return Response(json.dumps({"error": "negative"}), status=422, mimetype="application/json")
    if accept == "text/csv":
        return Response(f"{prediction}\\n", status=201, mimetype="text/csv", headers={"X-Total": str(prediction)})
    return Response(json.dumps({"total": prediction}).encode(), mimetype="application/json")
'''

TRANSFORM_SCRIPT = '''
class Answer:
    """Not werkzeug: any object with a status code, a body and a media type."""

    def __init__(self, body, status_code, media_type, headers):
        self.body, self.status_code, self.media_type, self.headers = body, status_code, media_type, headers


def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    if body == b"bad-status":
        return Answer(b"x", 99, "text/plain", {})
    return Answer(body[::-1], 202, "application/x-reversed", {"X-Length": str(len(body)), "Content-Length": "1"})
'''


def serve(tmp_path: Path, source: str):  # type: ignore[no-untyped-def]
    write_script(tmp_path, source)
    return live_app(ScriptHandler(tmp_path / "code" / "inference.py", tmp_path))


def test_a_werkzeug_response_is_the_http_response(tmp_path: Path) -> None:
    with serve(tmp_path, WERKZEUG_SCRIPT) as app:
        csv = app.client.post("/invocations", content="1,2", headers={"content-type": "text/csv", "accept": "text/csv"})
        assert (csv.status_code, csv.headers["content-type"], csv.text) == (201, "text/csv; charset=utf-8", "3.0\n")
        assert csv.headers["x-total"] == "3.0" and csv.headers["content-length"] == "4"
        js = app.client.post("/invocations", content="1,2", headers={"content-type": "text/csv"})
        assert (js.status_code, js.headers["content-type"], js.json()) == (200, "application/json", {"total": 3.0})
        # The status is the script's, error or not; the server serves on.
        bad = app.client.post("/invocations", content="-5", headers={"content-type": "text/csv"})
        assert (bad.status_code, bad.json()) == (422, {"error": "negative"})
        assert app.client.get("/ping").status_code == 200


def test_any_object_with_a_status_code_and_a_body_is_the_http_response(tmp_path: Path) -> None:
    with serve(tmp_path, TRANSFORM_SCRIPT) as app:
        r = app.client.post("/invocations", content=b"abc", headers={"content-type": "application/octet-stream"})
        assert (r.status_code, r.headers["content-type"], r.content) == (202, "application/x-reversed", b"cba")
        assert r.headers["x-length"] == "3" and r.headers["content-length"] == "3"  # ours, not the object's
        wrong = app.client.post("/invocations", content=b"bad-status",
                                headers={"content-type": "application/octet-stream"})
        assert wrong.status_code == 500 and "status 99" in wrong.json()["message"]
