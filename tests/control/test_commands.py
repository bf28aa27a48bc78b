"""The user commands (deploy, endpoints, describe, invoke, delete) against a real `mainsail up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import joblib
import numpy as np
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from mainsail.cli.app import app
from mainsail.gateway.app import create_control_app
from mainsail.hosting.store import SQLiteStore
from tests.conftest import ThreadedServer, free_port
from tests.control.helpers import UpProcess

pytestmark = pytest.mark.slow

INFERENCE = "import os, joblib\ndef model_fn(d):\n    return joblib.load(os.path.join(d, 'model.joblib'))\n"
BROKEN = "def model_fn(d):\n    raise RuntimeError('boom: the weights are [corrupt]')\n"


def _model_dir(root: Path, script: str = INFERENCE) -> Path:
    from sklearn.linear_model import LogisticRegression

    (root / "code").mkdir(parents=True)
    X = np.random.default_rng(0).normal(size=(50, 3))
    joblib.dump(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), root / "model.joblib")
    (root / "code" / "inference.py").write_text(script)
    return root


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `mainsail up` subprocess for the module."""
    up = UpProcess(tmp_path_factory.mktemp("up") / "home")
    try:
        yield up.url
    finally:
        assert up.stop() == 0, up.log_text()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def sm(url: str) -> Any:
    return boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                        aws_secret_access_key="x")


def cli(url: str, *args: str, input: str | None = None) -> Any:
    """Run ``mainsail ARGS --url URL`` in-process; stdout and stderr are kept apart."""
    result = CliRunner().invoke(app, [*args, "--url", url], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _gone(call: Any, **kwargs: Any) -> bool:
    try:
        call(**kwargs)
    except ClientError as exc:
        return "Could not find" in exc.response["Error"]["Message"]
    return False


def test_deploy_list_describe_invoke_delete(url: str, model_dir: Path, sm: Any) -> None:
    deployed = cli(url, "deploy", str(model_dir), "--name", "iris", "--env", "MAINSAIL_LOG_TAG=cli",
                   "--timeout", "120")
    assert deployed.exit_code == 0, deployed.output
    assert f"endpoint iris is InService: {url}/endpoints/iris/invocations" in deployed.stdout
    model = sm.describe_model(ModelName="iris")
    assert model["PrimaryContainer"]["ModelDataUrl"] == model_dir.resolve().as_uri()
    assert model["PrimaryContainer"]["Environment"] == {"MAINSAIL_LOG_TAG": "cli"}
    assert model["ExecutionRoleArn"] == "arn:aws:iam::000000000000:role/mainsail"
    variant = sm.describe_endpoint_config(EndpointConfigName="iris")["ProductionVariants"]
    assert [(v["VariantName"], v["ModelName"], v["InitialInstanceCount"], v["InitialVariantWeight"])
            for v in variant] == [("AllTraffic", "iris", 1, 1.0)]

    listed = cli(url, "endpoints")
    assert listed.exit_code == 0, listed.output
    assert "iris" in listed.stdout and "InService" in listed.stdout and "AllTraffic (w=1, 1/1)" in listed.stdout

    described = cli(url, "describe", "iris")
    assert described.exit_code == 0, described.output
    for text in ("InService", "AllTraffic", "ml.m5.large", f"{url}/endpoints/iris/invocations"):
        assert text in described.stdout

    csv = cli(url, "invoke", "iris", "--body", "1.0,0.0,0.0", "--content-type", "text/csv", "-v",
              "--target-variant", "AllTraffic")
    assert csv.exit_code == 0, csv.output
    assert json.loads(csv.stdout) == [1]
    assert "variant: AllTraffic" in csv.stderr
    as_json = cli(url, "invoke", "iris", "--body", "[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == [1, 0]
    from_stdin = cli(url, "invoke", "iris", "--body", "-", "--content-type", "text/csv", input="-2.0,0.0,0.0\n")
    assert from_stdin.exit_code == 0, from_stdin.output
    assert json.loads(from_stdin.stdout) == [0]

    bad = cli(url, "invoke", "iris", "--body", "not,a,number", "--content-type", "text/csv")
    assert bad.exit_code == 1
    assert "ModelError" in bad.stderr and bad.stdout == ""

    again = cli(url, "deploy", str(model_dir), "--name", "iris")
    assert again.exit_code == 1
    assert "already exist" in again.stderr and "iris" in again.stderr
    assert sm.describe_endpoint(EndpointName="iris")["EndpointStatus"] == "InService"  # untouched

    deleted = cli(url, "delete", "iris")
    assert deleted.exit_code == 0, deleted.output
    for line in ("deleted endpoint iris", "deleted endpoint config iris", "deleted model iris"):
        assert line in deleted.stdout
    assert _gone(sm.describe_endpoint, EndpointName="iris")
    assert _gone(sm.describe_endpoint_config, EndpointConfigName="iris")
    assert _gone(sm.describe_model, ModelName="iris")


def test_deploy_of_a_model_that_cannot_load_fails_with_the_reason(url: str, tmp_path: Path, sm: Any) -> None:
    broken = _model_dir(tmp_path / "broken", BROKEN)
    result = cli(url, "deploy", str(broken), "--name", "broken", "--timeout", "120")
    assert result.exit_code == 1
    assert "Failed" in result.stderr and "boom: the weights are [corrupt]" in result.stderr
    described = cli(url, "describe", "broken")
    assert described.exit_code == 0
    assert "Failed" in described.stdout and "boom: the weights are [corrupt]" in described.stdout
    deleted = cli(url, "delete", "broken", "--keep-model")
    assert deleted.exit_code == 0, deleted.output
    assert _gone(sm.describe_endpoint, EndpointName="broken")
    assert _gone(sm.describe_endpoint_config, EndpointConfigName="broken")
    assert sm.describe_model(ModelName="broken")["ModelName"] == "broken"  # --keep-model
    sm.delete_model(ModelName="broken")


def test_a_failed_step_leaves_nothing_behind(url: str, model_dir: Path, sm: Any) -> None:
    result = cli(url, "deploy", str(model_dir), "--name", "half", "--instance-type", "ml.nope.large")
    assert result.exit_code == 1
    assert "ValidationException" in result.stderr and "instanceType" in result.stderr
    assert _gone(sm.describe_model, ModelName="half")


def test_an_existing_model_of_that_name_stops_deploy(url: str, model_dir: Path, sm: Any) -> None:
    sm.create_model(ModelName="taken", ExecutionRoleArn="arn:aws:iam::123456789012:role/R",
                    PrimaryContainer={"Image": "x", "ModelDataUrl": model_dir.as_uri()})
    try:
        result = cli(url, "deploy", str(model_dir), "--name", "taken")
        assert result.exit_code == 1
        assert "model taken already exists" in result.stderr
        assert _gone(sm.describe_endpoint_config, EndpointConfigName="taken")
    finally:
        sm.delete_model(ModelName="taken")


def test_bad_arguments_are_refused_before_any_call(url: str, tmp_path: Path) -> None:
    missing = cli(url, "deploy", str(tmp_path / "nowhere"), "--name", "x")
    assert missing.exit_code == 2 and "no such model directory" in missing.stderr
    env = cli(url, "deploy", str(tmp_path), "--name", "x", "--env", "NOEQUALS")
    assert env.exit_code == 2 and "KEY=VALUE" in env.stderr
    nobody = cli(url, "invoke", "x")
    assert nobody.exit_code == 2 and "--body" in nobody.stderr


@pytest.mark.parametrize("args", [["describe", "ghost"], ["invoke", "ghost", "--body", "{}"], ["delete", "ghost"]])
def test_a_missing_endpoint_is_an_error(url: str, args: list[str]) -> None:
    result = cli(url, *args)
    assert result.exit_code == 1
    assert "ghost" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("args", [["endpoints"], ["describe", "e"], ["invoke", "e", "--body", "{}"], ["delete", "e"],
                                  ["deploy", ".", "--name", "e"]])
def test_no_control_plane_is_one_friendly_line(args: list[str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = cli(nowhere, *args)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: no control plane at {nowhere}: start it with `mainsail up`"


def test_no_endpoints_is_a_friendly_line(tmp_path: Path) -> None:
    server = ThreadedServer(create_control_app(SQLiteStore(tmp_path / "state.db")))
    server.start()
    try:
        result = cli(server.url, "endpoints")
    finally:
        server.stop()
    assert result.exit_code == 0
    assert result.stdout.startswith("no endpoints at")


def test_the_real_cli_deploys_an_archive_and_invokes_from_stdin(url: str, model_dir: Path, tmp_path: Path,
                                                                 sm: Any) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    env = {**os.environ, "MAINSAIL_URL": url}

    def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "mainsail.cli", *args], env=env, input=input,
                              capture_output=True, timeout=180)

    deployed = run("deploy", str(archive), "--name", "archive", "--timeout", "120")
    assert deployed.returncode == 0, deployed.stderr.decode()
    assert b"endpoint archive is InService" in deployed.stdout
    invoked = run("invoke", "archive", "--body-file", "-", "--content-type", "text/csv", input=b"1.0,0.0,0.0")
    assert invoked.returncode == 0, invoked.stderr.decode()
    assert json.loads(invoked.stdout) == [1]
    deleted = run("delete", "archive")
    assert deleted.returncode == 0, deleted.stderr.decode()
    assert _gone(sm.describe_model, ModelName="archive")
