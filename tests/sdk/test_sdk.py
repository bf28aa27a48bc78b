"""The SageMaker Python SDK, unmodified, against a real `mainsail up`: each example in examples/sdk/
(adapted copies of the seeds' SDK snippets) runs in a subprocess with the SDK major's own virtual
environment (`scripts/sdk-venv 2|3`, built and cached by `make test`), after
`eval "$(mainsail env --url ...)"`, exactly as a user runs it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import joblib
import pytest

from tests.conftest import free_port

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


class Up:
    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.log = home / "up.log"
        home.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mainsail.cli", "up", "--port", str(self.port), "--home", str(home)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MAINSAIL_HOME": str(home)})
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(self.url + "/", timeout=1)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline and self.proc.poll() is None, self.log.read_text()[-3000:]
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

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
            f"stderr:\n{result.stderr[-6000:]}\nmainsail up:\n{self.log.read_text()[-3000:]}")
        return result

    def client(self, service: str) -> object:
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="x",
                            aws_secret_access_key="x")


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
    while endpoints := sm.list_endpoints()["Endpoints"]:  # type: ignore[attr-defined]
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
    _no_leftovers(up)
