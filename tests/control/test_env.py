"""``mainsail env``: the exports that point unmodified boto3 / SageMaker SDK scripts at mainsail."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mainsail.aws.identity import ACCOUNT
from mainsail.cli.env import ENV_UNSET
from mainsail.hosting import resources as res
from tests.control.helpers import Plane

CLI = [sys.executable, "-m", "mainsail.cli", "env"]


def _run(*args: str, home: Path) -> str:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MAINSAIL_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    return out.stdout


def _exports(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            name, _, value = words[1].partition("=")
            values[name] = value
    return values


def test_sh_output_and_config_file(tmp_path: Path) -> None:
    text = _run("--url", "http://127.0.0.1:8711", "--region", "eu-west-1", home=tmp_path)
    assert text.splitlines()[0] == "unset " + " ".join(ENV_UNSET)
    values = _exports(text)
    config = tmp_path / "sagemaker-sdk-config-eu-west-1.yaml"
    assert values == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:8711",
        "AWS_ACCESS_KEY_ID": "mainsail",
        "AWS_SECRET_ACCESS_KEY": "mainsail",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config.resolve()),
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "MAINSAIL_URL": "http://127.0.0.1:8711",
    }
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(config.read_text()) == {
        "SchemaVersion": "1.0",
        "SageMaker": {"PythonSDK": {"Modules": {
            "TelemetryOptOut": True,
            "Session": {"DefaultS3Bucket": f"sagemaker-eu-west-1-{ACCOUNT}"}}}},
    }
    # the reference config file's keys are all there (tests/fixtures/sagemaker_sdk_config.yaml)
    reference = Path(__file__).resolve().parents[1] / "fixtures" / "sagemaker_sdk_config.yaml"
    ref = yaml.safe_load(reference.read_text())["SageMaker"]["PythonSDK"]["Modules"]
    ours = yaml.safe_load(config.read_text())["SageMaker"]["PythonSDK"]["Modules"]
    assert set(ref) == set(ours) and set(ref["Session"]) == set(ours["Session"])


def test_values_are_shell_quoted(tmp_path: Path) -> None:
    url = "http://127.0.0.1:8700/it's $HOME `x`"
    text = _run("--url", url, "--home", str(tmp_path / "a home"), home=tmp_path)
    out = subprocess.run(["bash", "-c", 'eval "$1"; printf "%s\\n" "$AWS_ENDPOINT_URL" '
                          '"$SAGEMAKER_USER_CONFIG_OVERRIDE"', "_", text],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [url, str((tmp_path / "a home").resolve() / "sagemaker-sdk-config-us-east-1.yaml")]


def test_other_shells_and_bad_options(tmp_path: Path) -> None:
    fish = _run("--shell", "fish", home=tmp_path)
    assert "set -gx AWS_ENDPOINT_URL 'http://127.0.0.1:8700';" in fish.splitlines()
    assert "set -e AWS_SESSION_TOKEN;" in fish.splitlines()
    ps = _run("--shell", "powershell", home=tmp_path)
    assert "$Env:SAGEMAKER_VALIDATE_ROLE = 'false'" in ps.splitlines()
    for bad in (["--shell", "tcsh"], ["--url", "127.0.0.1:8700"], ["--region", "moon"]):
        out = subprocess.run([*CLI, *bad], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "MAINSAIL_HOME": str(tmp_path)})
        assert out.returncode == 2 and out.stderr.startswith("error:"), (bad, out.stderr)


SEED_SCRIPT = """
import boto3

account = boto3.client("sts").get_caller_identity()["Account"]
sm = boto3.client("sagemaker")
role = f"arn:aws:iam::{account}:role/SageMakerRole"
sm.create_model(ModelName="from-env", ExecutionRoleArn=role,
                PrimaryContainer={"Image": "mainsail", "ModelDataUrl": "s3://bucket/model.tar.gz"})
print("account", account)
print("endpoints", len(sm.list_endpoints()["Endpoints"]))
print("model", sm.describe_model(ModelName="from-env")["ModelArn"])
logs = boto3.client("logs")
print("groups", [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]])
try:
    logs.filter_log_events(logGroupName="/aws/sagemaker/Endpoints/none")
except logs.exceptions.ResourceNotFoundException as exc:
    print("logs", exc.response["Error"]["Message"])
print("region", sm.meta.region_name)
"""


@pytest.mark.slow
def test_eval_env_then_an_unmodified_script(plane: Plane, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SEED_SCRIPT))
    source = script.read_text()
    assert "endpoint_url" not in source and "127.0.0.1" not in source and "aws_access_key" not in source
    (tmp_path / "logs" / "old-endpoint").mkdir(parents=True)
    # what a developer's shell may hold: all of it must be neutralised by the eval
    hostile = {"AWS_PROFILE": "does-not-exist", "AWS_SESSION_TOKEN": "real-looking-token",
               "AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "AKIAREALKEY",
               "AWS_SECRET_ACCESS_KEY": "real-secret", "AWS_DEFAULT_REGION": "ap-south-1",
               "MAINSAIL_HOME": str(tmp_path)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | hostile
    cmd = f'eval "$({shlex.join(CLI)} --url {plane.url})" && {shlex.quote(sys.executable)} {shlex.quote(str(script))}'
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        f"account {ACCOUNT}",
        "endpoints 0",
        f"model arn:aws:sagemaker:us-east-1:{ACCOUNT}:model/from-env",
        "groups ['/aws/sagemaker/Endpoints/old-endpoint']",
        "logs The specified log group does not exist.",
        "region us-east-1",
    ]
    assert plane.store.get(res.MODEL, "from-env") is not None  # it reached this control plane
