"""The `make demo` walk-through: build models, serve them, deploy one through the control plane, stop.

Everything runs on embedded defaults, on free loopback ports: first a scikit-learn model with the
SageMaker-style `code/inference.py` below under `mainsail serve`; then an XGBoost classifier packaged
with `mainsail.package` (risk tables, imputation, calibration) and served by the built-in tabular
handler with no script at all, printing raw (`legacy-score`) and calibrated scores; then that model
deployed through `mainsail up` with the real boto3 clients, as seed 003 does (examples/up_demo.py);
last a tiny bimodal BERT (text + tabular) trained here for a few steps and served by the built-in
PyTorch handler.
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
TABULAR = ROOT / ".demo" / "abuse-model"
BIMODAL = ROOT / ".demo" / "bimodal-model"

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


def package_tabular_model(path: Path) -> dict[str, object]:
    """An XGBoost classifier with risk tables, imputation and calibration written to ``path`` (no
    inference script); returns one request record for it."""
    import numpy as np
    import pandas as pd
    import xgboost

    from mainsail.package import fit_and_package

    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame({
        "amount": rng.gamma(2.0, 50.0, size=n),
        "age_days": rng.integers(0, 3650, size=n).astype(float),
        "payment": rng.choice(["card", "wire", "cash", "voucher"], size=n),
        "region": rng.choice(["NA", "EU", "FE"], size=n),
    })
    frame.loc[rng.random(n) < 0.1, "amount"] = np.nan
    risk = 0.01 * np.nan_to_num(frame["amount"]) + (frame["payment"] == "voucher") * 1.5
    frame["is_abuse"] = (risk + rng.normal(size=n) > 1.5).astype(int)
    fit_and_package(path, xgboost.XGBClassifier(n_estimators=50, max_depth=4, n_jobs=1), frame,
                    label="is_abuse", feature_columns=["amount", "age_days", "payment", "region"],
                    cat_columns=["payment", "region"], calibrate="isotonic", overwrite=True)
    return {"amount": 250.0, "age_days": 12, "payment": "voucher", "region": "EU"}


def build_tabular_model() -> None:
    package_tabular_model(TABULAR)
    files = sorted(str(p.relative_to(TABULAR)) for p in TABULAR.rglob("*") if p.is_file())
    print(f"packaged an XGBoost classifier with mainsail.package in {TABULAR}: {', '.join(files)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(url: str, body: bytes | None = None, content_type: str | None = None,
            accept: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def serve(model_dir: Path, examples: list[tuple[str, str, str]]) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mainsail.cli", "serve", str(model_dir), "--port", str(port),
           "--workers", "2", "--log-level", "warning"]
    print("\n$ mainsail serve", model_dir.relative_to(ROOT), "--port", port, "--workers 2")
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
        for content_type, accept, body in examples:
            if content_type == "text/plain":
                print("(this script refuses text/plain: the client gets a JSON error with the message,"
                      " the server log gets the script's traceback)")
            status, answer = request(url + "/invocations", body.encode(), content_type, accept)
            print(f"POST /invocations  Content-Type: {content_type}  Accept: {accept}")
            print(textwrap.indent(body.strip(), "  > "))
            print(textwrap.indent(f"<- {status} {answer.strip()}", "  "), "\n")
        status, metrics = request(url + "/metrics")
        counts = [line for line in metrics.splitlines() if line.startswith("Invocation")]
        print("GET /metrics (excerpt):\n" + textwrap.indent("\n".join(counts), "  "))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        print("server stopped")
    return 0


def main() -> int:
    print("== 1. A SageMaker scikit-learn inference script, unchanged ==")
    build_model()
    code = serve(DEMO, [
        ("application/json", "application/json",
         json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]})),
        ("text/csv", "application/json", "5.9,3.0,4.2,1.5\n"),
        ("text/plain", "application/json", "hello"),
    ])
    if code:
        return code
    print("\n== 2. The built-in tabular handler: no script; risk tables, imputation, calibration ==")
    build_tabular_model()
    code = serve(TABULAR, [
        ("application/json", "application/json",
         json.dumps({"amount": 250.0, "age_days": 12, "payment": "voucher", "region": "EU"})),
        ("application/json", "application/json",
         json.dumps([{"amount": None, "age_days": 900, "payment": "card", "region": "NA"},
                     {"amount": 40.0, "age_days": 5, "payment": "bitcoin", "region": "FE"}])),
        ("text/csv", "text/csv", "250.0,12,voucher,EU\n40.0,5,bitcoin,FE\n"),
    ])
    if code:
        return code
    print("\n== 3. The control plane: `mainsail up` and the real boto3 clients, as seed 003 deploys ==")
    sys.path.insert(0, str(ROOT / "examples"))
    from up_demo import run as run_up_demo

    code = int(run_up_demo(TABULAR, free_port(), "250.0,12,voucher,EU\n",
                           {"amount": 40.0, "age_days": 5, "payment": "card", "region": "FE"}))
    if code:
        return code
    print("\n== 4. The built-in multimodal PyTorch handler: a bimodal BERT (text + tabular), no script ==")
    from bimodal_demo import build_bimodal_model, sample_records

    build_bimodal_model(BIMODAL, size="tiny")
    print(f"trained a tiny bimodal_bert for a few steps and wrote it in the reference layout to {BIMODAL}")
    first, second = sample_records(2)
    return serve(BIMODAL, [
        ("application/json", "application/json", json.dumps(first)),
        ("application/jsonlines", "text/csv", json.dumps(first) + "\n" + json.dumps(second) + "\n"),
    ])


if __name__ == "__main__":
    sys.exit(main())
