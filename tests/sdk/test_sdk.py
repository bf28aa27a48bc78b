"""The SageMaker Python SDK, unmodified, against a real `mainsail up`: each example in examples/sdk/
(adapted copies of the seeds' SDK snippets) runs in a subprocess with the SDK major's own virtual
environment (`scripts/sdk-venv 2|3`, built and cached by `make test`), after
`eval "$(mainsail env --url ...)"`, exactly as a user runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest

from tests.control.helpers import UpProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "sdk"
RUNNER = Path(__file__).with_name("run_example.py")
INFERENCE = """
import os
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""


def sdk_python(major: int) -> Path:
    """The interpreter of the SDK major's environment; building it needs PyPI (make test does it)."""
    try:
        out = subprocess.run([str(ROOT / "scripts" / "sdk-venv"), str(major)], capture_output=True, text=True,
                             timeout=1200, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("MAINSAIL_SDK_TESTS") == "skip":
            pytest.skip(f"SageMaker SDK v{major} environment unavailable (MAINSAIL_SDK_TESTS=skip)")
        raise AssertionError(f"could not build the SDK v{major} environment: {exc}") from exc
    return Path(out.stdout.strip().splitlines()[-1]) / "bin" / "python"


class Up(UpProcess):
    """`mainsail up` that runs example scripts the way a user would."""

    def run(self, python: Path, script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`eval "$(mainsail env)"`, then the script, from its own folder, in a clean environment."""
        env_cmd = shlex.join([sys.executable, "-m", "mainsail.cli", "env", "--url", self.url])
        cmd = f'eval "$({env_cmd})" && exec {shlex.join([str(python), str(RUNNER), script.name, *args])}'
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
        base["MAINSAIL_HOME"] = str(self.home)
        result = subprocess.run(["bash", "-c", cmd], cwd=script.parent, env=base, capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, (
            f"{script.name} failed ({result.returncode})\nstdout:\n{result.stdout[-4000:]}\n"
            f"stderr:\n{result.stderr[-6000:]}\nmainsail up:\n{self.log_text(3000)}")
        return result


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    plane = Up(tmp_path_factory.mktemp("up") / "home")
    try:
        yield plane
    finally:
        plane.stop()


def _archive(root: Path, n_features: int, *, code: bool) -> Path:
    from sklearn.linear_model import LogisticRegression

    src = root / "src"
    src.mkdir(parents=True)
    X = [[(i * 7 + j * 3) % 5 / 2.0 for j in range(n_features)] for i in range(40)]
    joblib.dump(LogisticRegression().fit(X, [int(row[0] > 1.0) for row in X]), src / "model.joblib")
    if code:
        (src / "code").mkdir()
        (src / "code" / "inference.py").write_text(INFERENCE)
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return archive


def _no_leftovers(up: Up) -> None:
    """Every endpoint the script deleted is gone (DeleteEndpoint returns while it is Deleting)."""
    sm = up.client("sagemaker")
    deadline = time.monotonic() + 30
    while endpoints := sm.list_endpoints()["Endpoints"]:
        assert all(e["EndpointStatus"] == "Deleting" for e in endpoints), endpoints
        assert time.monotonic() < deadline, endpoints
        time.sleep(0.2)


def test_sdk_v2_seed_003_model_deploy_predict_cleanup(up: Up, tmp_path: Path) -> None:
    result = up.run(sdk_python(2), EXAMPLES / "seed_003_sdk_v2.py", str(_archive(tmp_path, 4, code=True)))
    assert "predictor.predict: [1,0]" in result.stdout.replace(", ", ",")
    assert "runtime.invoke_endpoint: [1]" in result.stdout
    _no_leftovers(up)


def test_sdk_v2_seed_002_sklearn_model_with_entry_point(up: Up, tmp_path: Path) -> None:
    result = up.run(sdk_python(2), EXAMPLES / "seed_002" / "realtime_sdk_v2.py",
                    str(_archive(tmp_path, 5, code=False)))
    assert "Inference Role ARN: arn:aws:iam::123456789012:role/acme-sagemaker/" in result.stdout
    assert "Endpoint deployed: rc-fraud-detection-realtime" in result.stdout
    assert "Predictions: [" in result.stdout and "Probabilities: [[" in result.stdout
    assert "Result: {'predictions':" in result.stdout
    _no_leftovers(up)


def test_sdk_v3_seed_001_model_builder(up: Up, tmp_path: Path) -> None:
    result = up.run(sdk_python(3), EXAMPLES / "seed_001_model_builder_v3.py", str(_archive(tmp_path, 4, code=True)))
    assert "endpoint.invoke: [1,0]" in result.stdout.replace(", ", ",")
    _no_leftovers(up)


def test_sdk_v3_core_resources(up: Up, tmp_path: Path) -> None:
    result = up.run(sdk_python(3), Path(__file__).with_name("core_resources_v3.py"),
                    str(_archive(tmp_path, 4, code=True)))
    assert "status: InService" in result.stdout and "listed: ['core-endpoint']" in result.stdout
    assert "invoke: [1]" in result.stdout and "deleted: []" in result.stdout
    assert "stream: [1] application/json" in result.stdout  # InvokeEndpointWithResponseStream, one part
    assert "sdk stream: ok" in result.stdout or "'EventStream' object has no attribute" in result.stdout
    _no_leftovers(up)


# -- SDK v2 flows (tests/sdk/sdk_v2_flows.py): framework models, serializers, updates, failures --------------
FLOWS = Path(__file__).with_name("sdk_v2_flows.py")
ROWS_PREDICTED = "[1, 0]"  # what _archive(..., 4, ...)'s classifier answers for the flows' two rows
FAILING = """
def model_fn(model_dir):
    raise RuntimeError("weights checksum mismatch in model.joblib")
"""

PYTORCH_INFERENCE = """
import os

import torch
from net import build  # from source_dir, shipped in the repacked model.tar.gz's code/


def model_fn(model_dir):
    model = build()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu"))
    return model
"""


def _resources(up: Up) -> dict[str, set[str]]:
    sm = up.client("sagemaker")
    return {
        "endpoints": {e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]},
        "configs": {c["EndpointConfigName"]
                    for c in sm.list_endpoint_configs()["EndpointConfigs"]},
        "models": {m["ModelName"] for m in sm.list_models()["Models"]},
    }


def _run_flow(up: Up, *args: str) -> str:
    """Runs one flow and checks that it left no endpoint, endpoint config or model behind."""
    before = _resources(up)
    result = up.run(sdk_python(2), FLOWS, *args)
    _no_leftovers(up)
    assert _resources(up) == before, result.stdout
    return result.stdout


def _source_dir(root: Path, script: str) -> Path:
    code = root / "code-src"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(script)
    return code


def test_sdk_v2_pytorch_model_repack_json(up: Up, tmp_path: Path) -> None:
    import torch

    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]))
        linear.bias.copy_(torch.tensor([0.5, 0.0]))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.save(linear.state_dict(), model_dir / "model.pth")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model_dir / "model.pth", arcname="model.pth")
    code = _source_dir(tmp_path, PYTORCH_INFERENCE)
    (code / "net.py").write_text("import torch\n\n\ndef build():\n    return torch.nn.Linear(3, 2)\n")

    out = _run_flow(up, "pytorch", str(archive), str(code))
    assert "pytorch-inference:2.1" in out and "program: inference.py" in out
    assert "predict: [[14.5, 1.0], [0.5, 0.0]]" in out
    # the SDK repacked the archive with code/ and uploaded it (HeadObject + GetObject + PutObject)
    repacked = out.split("repacked: ", 1)[1].split()[0]
    bucket, key = repacked.removeprefix("s3://").split("/", 1)
    body = up.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    repacked_tar = tmp_path / "repacked.tar.gz"
    repacked_tar.write_bytes(body)
    with tarfile.open(repacked_tar) as tar:
        names = set(tar.getnames())
    assert {"model.pth", "code/inference.py", "code/net.py"} <= {n.removeprefix("./") for n in names}, names


def test_sdk_v2_xgboost_builtin_algorithm_csv(up: Up, tmp_path: Path) -> None:
    import numpy as np
    import xgboost

    X = np.array([[(i * 7 + j * 3) % 5 - 2.0 for j in range(3)] for i in range(60)])
    y = (X[:, 0] + X[:, 1] > 0).astype(float)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
                            xgboost.DMatrix(X, label=y), num_boost_round=5)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    booster.save_model(str(model_dir / "model.json"))
    (model_dir / "model.json").rename(model_dir / "xgboost-model")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model_dir / "xgboost-model", arcname="xgboost-model")
    rows = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5], [1.0, 1.0, 1.0]])
    expected = booster.predict(xgboost.DMatrix(rows)).tolist()

    out = _run_flow(up, "xgboost", str(archive))
    assert "/sagemaker-xgboost:1.7-1" in out
    predicted = [float(v) for v in out.split("predict: ", 1)[1].splitlines()[0].strip("[]").split(",")]
    assert predicted == pytest.approx(expected, abs=1e-6)


def test_sdk_v2_numpy_serializer_deserializer(up: Up, tmp_path: Path) -> None:
    out = _run_flow(up, "numpy", str(_archive(tmp_path, 4, code=False)), str(_source_dir(tmp_path, INFERENCE)))
    assert "request content type: application/x-npy accept: ('application/x-npy',)" in out
    assert "response content type: application/x-npy" in out
    assert "predict: ndarray int64 " + ROWS_PREDICTED in out


def test_sdk_v2_update_endpoint_instance_count_and_model(up: Up, tmp_path: Path) -> None:
    out = _run_flow(up, "update", str(_archive(tmp_path, 4, code=False)), str(_source_dir(tmp_path, INFERENCE)))
    for n in (1, 2, 3):
        assert f"predict {n}: {ROWS_PREDICTED}" in out
    assert "config 2: sdk-v2-update-" in out
    assert "instances: 2 2" in out and "instances: 1 1" in out
    assert "models: ['sdk-v2-update-second']" in out


def test_sdk_v2_deploy_failure_reports_the_model_fn_exception(up: Up, tmp_path: Path) -> None:
    out = _run_flow(up, "failure", str(_archive(tmp_path, 4, code=False)), str(_source_dir(tmp_path, FAILING)))
    raised = out.split("raised: ", 1)[1].splitlines()[0]
    assert raised.startswith("UnexpectedStatusException | Error hosting endpoint sdk-v2-failure: Failed. Reason: ")
    assert "RuntimeError: weights checksum mismatch in model.joblib" in raised
