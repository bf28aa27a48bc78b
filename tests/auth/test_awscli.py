"""The AWS CLI (its own environment: awscli pins its own botocore) against ``mainsail up --credentials``:
the configured key works for SageMaker, S3 (including ``aws s3 presign``), CloudWatch Logs and STS; a
wrong secret is refused with each service's code."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.control.helpers import UpProcess

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "AKIACLI0000000000001", "cli/secret"


def aws_cli() -> Path:
    out = subprocess.run([str(ROOT / "scripts" / "sdk-venv"), "awscli"], capture_output=True, text=True,
                         timeout=1200, check=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "bin" / "aws"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    root = tmp_path_factory.mktemp("awscli")
    (root / "credentials").write_text(f"[cli]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    process = UpProcess(root / "home", args=("--credentials", str(root / "credentials")))
    yield process
    assert process.stop() == 0, process.log_text()


def run(up: UpProcess, *args: str, secret: str = SECRET, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    return subprocess.run([str(aws_cli()), "--endpoint-url", up.url, *args], env=env, input=stdin,
                          capture_output=True, timeout=120)


def test_the_aws_cli_with_the_configured_key(up: UpProcess, tmp_path: Path) -> None:
    assert run(up, "sagemaker", "list-endpoints").returncode == 0
    identity = run(up, "sts", "get-caller-identity", "--query", "Arn", "--output", "text")
    assert identity.stdout.decode().strip() == "arn:aws:iam::123456789012:user/cli", identity.stderr
    assert run(up, "logs", "describe-log-groups").returncode == 0
    assert run(up, "s3", "mb", "s3://cli-bucket").returncode == 0
    (tmp_path / "f.txt").write_bytes(b"from the cli")
    copied = run(up, "s3", "cp", str(tmp_path / "f.txt"), "s3://cli-bucket/dir/f.txt")
    assert copied.returncode == 0, copied.stderr
    assert run(up, "s3", "cp", "s3://cli-bucket/dir/f.txt", "-").stdout == b"from the cli"
    presigned = run(up, "s3", "presign", "s3://cli-bucket/dir/f.txt", "--expires-in", "60")
    assert httpx.get(presigned.stdout.decode().strip()).content == b"from the cli"


@pytest.mark.parametrize(("args", "code"), [
    (("sagemaker", "list-endpoints"), "InvalidSignatureException"),
    (("logs", "describe-log-groups"), "InvalidSignatureException"),
    (("sts", "get-caller-identity"), "SignatureDoesNotMatch"),
    (("s3api", "list-buckets"), "SignatureDoesNotMatch"),
])
def test_the_aws_cli_with_a_wrong_secret(up: UpProcess, args: tuple[str, ...], code: str) -> None:
    result = run(up, *args, secret="wrong")
    assert result.returncode != 0 and code in result.stderr.decode(), result.stderr
