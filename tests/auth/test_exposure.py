"""The exposure rules of ``mainsail up``: beyond loopback only with credentials (or ``--insecure``, with
a warning), TLS, a bad credentials file stopping the start; ``mainsail env --profile``; the local
backend's instances on loopback."""

from __future__ import annotations

import gc
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from mainsail.gateway.server import ExposureError, is_loopback, secure_start
from mainsail.settings import ControlSettings
from tests.conftest import free_port
from tests.control.helpers import UpProcess

pytestmark = pytest.mark.slow

CREDENTIALS = """[ops]
aws_access_key_id = AKIAOPS0000000000001
aws_secret_access_key = ops/secret
"""


def run_up(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mainsail.cli", "up", "--home", str(home), "--port",
                           str(free_port()), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MAINSAIL_HOME": str(home)})


def test_binding_beyond_loopback_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    result = run_up("--host", "0.0.0.0", home=tmp_path)
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without credentials" in result.stderr
    assert "--insecure" in result.stderr


def test_a_bad_credentials_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text("[ops]\naws_access_key_id = AKIA1\n")
    result = run_up("--credentials", str(tmp_path / "credentials"), home=tmp_path)
    assert result.returncode == 2 and "aws_access_key_id and aws_secret_access_key are both required" in result.stderr
    result = run_up("--certfile", str(tmp_path / "credentials"), home=tmp_path)
    assert result.returncode == 2 and "TLS needs both --certfile and --keyfile" in result.stderr


def test_the_exposure_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("myhost")
    with pytest.raises(ExposureError):
        secure_start(ControlSettings(home=tmp_path, host="192.168.1.5"))
    with caplog.at_level(logging.WARNING, logger="mainsail.gateway.server"):
        assert secure_start(ControlSettings(home=tmp_path, host="0.0.0.0", insecure=True)) is None
    assert "INSECURE: serving on 0.0.0.0 without credentials" in caplog.text
    (tmp_path / "credentials").write_text(CREDENTIALS)
    keys = secure_start(ControlSettings(home=tmp_path, host="0.0.0.0", credentials=tmp_path / "credentials"))
    assert keys is not None and keys.get("AKIAOPS0000000000001") is not None
    assert secure_start(ControlSettings(home=tmp_path)) is None  # loopback, nothing configured: as before


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_with_credentials_and_env_profile(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "credentials").write_text(CREDENTIALS)
    up = UpProcess(tmp_path / "home", args=("--credentials", str(tmp_path / "credentials"), "--certfile",
                                            str(cert), "--keyfile", str(key)))
    clients: list[Any] = []

    def client(service: str, secret: str) -> Any:
        made = boto3.client(service, endpoint_url=up.url, region_name="us-east-1", verify=str(cert),
                            aws_access_key_id="AKIAOPS0000000000001", aws_secret_access_key=secret,
                            config=Config(retries={"max_attempts": 1}))
        clients.append(made)
        return made

    try:
        assert up.url.startswith("https://")

        assert client("sagemaker", "ops/secret").list_endpoints()["Endpoints"] == []
        s3 = client("s3", "ops/secret")
        s3.create_bucket(Bucket="tls-bucket")
        s3.put_object(Bucket="tls-bucket", Key="k", Body=b"over https")
        assert s3.get_object(Bucket="tls-bucket", Key="k")["Body"].read() == b"over https"
        try:  # not pytest.raises: its traceback would keep botocore's connection (and the server) waiting
            client("sagemaker", "wrong").list_endpoints()
            refused = ""
        except ClientError as exc:
            refused = exc.response["Error"]["Code"]
        assert refused == "InvalidSignatureException"
        # `mainsail env --profile` hands an unmodified script the profile's keys (and the CA bundle)
        env_cmd = shlex.join([sys.executable, "-m", "mainsail.cli", "env", "--url", up.url, "--home",
                              str(tmp_path / "env"), "--profile", "ops", "--credentials",
                              str(tmp_path / "credentials"), "--ca-bundle", str(cert)])
        script = "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"
        base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        result = subprocess.run(["bash", "-c", f'eval "$({env_cmd})" && {shlex.quote(sys.executable)} -c '
                                 f'{shlex.quote(script)}'], capture_output=True, text=True, timeout=60, env=base)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "arn:aws:iam::123456789012:user/ops"
    finally:
        for made in clients:  # an idle TLS connection holds uvicorn's shutdown for its SSL close (30 s)
            made.close()
        clients.clear()
        gc.collect()  # and a connection botocore dropped without closing: its socket closes when collected
        assert up.stop() == 0, up.log_text()
    assert "signed requests: 1 key(s)" in up.log_text()


def test_env_profile_errors(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(CREDENTIALS)
    cli = [sys.executable, "-m", "mainsail.cli", "env", "--home", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "MAINSAIL_CREDENTIALS"}
    result = subprocess.run([*cli, "--profile", "ops"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and "--profile needs --credentials" in result.stderr
    result = subprocess.run([*cli, "--profile", "nobody", "--credentials", str(tmp_path / "credentials")],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and "has no [nobody] section (it has: ops)" in result.stderr
