"""The `make demo` walk-through: build a model, serve it, send requests, print the answers, stop.

Everything runs on embedded defaults: a scikit-learn model trained here on synthetic data, the
SageMaker-style `code/inference.py` below, and `mainsail serve` on a free loopback port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo" / "iris-model"

INFERENCE_PY = '''\
# A SageMaker scikit-learn inference script: mainsail runs it unchanged.
import json
import os

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(request_body, request_content_type):
    if request_content_type == "application/json":
        return np.array(json.loads(request_body)["instances"], dtype=float)
    if request_content_type == "text/csv":
        rows = [line.split(",") for line in request_body.strip().splitlines()]
        return np.array(rows, dtype=float)
    raise ValueError(f"Unsupported content type: {request_content_type}")


def predict_fn(input_data, model):
    return {
        "predictions": model.predict(input_data).tolist(),
        "probabilities": model.predict_proba(input_data).round(4).tolist(),
    }


def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
'''


def build_model() -> None:
    from joblib import dump
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    model = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    (DEMO / "code").mkdir(parents=True, exist_ok=True)
    dump(model, DEMO / "model.joblib")
    (DEMO / "code" / "inference.py").write_text(INFERENCE_PY)
    print(f"built a scikit-learn iris classifier in {DEMO}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def main() -> int:
    build_model()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mainsail.cli", "serve", str(DEMO), "--port", str(port),
           "--workers", "2", "--log-level", "warning"]
    print("$ mainsail serve", DEMO.relative_to(ROOT), "--port", port, "--workers 2")
    server = subprocess.Popen(cmd, env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = request(url + "/ping")
                if status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"GET /ping -> 200 (ready at {url})\n")
        examples = [
            ("application/json", json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})),
            ("text/csv", "5.9,3.0,4.2,1.5\n"),
            ("text/plain", "hello"),
        ]
        for content_type, body in examples:
            if content_type == "text/plain":
                print("(this script refuses text/plain: the client gets a JSON error with the message,"
                      " the server log gets the script's traceback)")
            status, answer = request(url + "/invocations", body.encode(), content_type)
            print(f"POST /invocations  Content-Type: {content_type}")
            print(textwrap.indent(body.strip(), "  > "))
            print(f"  <- {status} {answer}\n")
        status, metrics = request(url + "/metrics")
        counts = [line for line in metrics.splitlines() if line.startswith("Invocation")]
        print("GET /metrics (excerpt):\n" + textwrap.indent("\n".join(counts), "  "))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        print("\nserver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
