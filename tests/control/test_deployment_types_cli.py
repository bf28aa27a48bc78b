"""The deployment types through the CLI and the Python API, against a real `mainsail up`:
serverless (`--serverless-memory/--max-concurrency`), asynchronous (`--async-output`, `invoke-async`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import mainsail
from mainsail.cli.app import app
from tests.control.helpers import INFERENCE_OK, UpProcess, make_model_dir, s3_object

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    plane = UpProcess(tmp_path_factory.mktemp("up") / "home")
    try:
        yield plane
    finally:
        assert plane.stop() == 0, plane.log_text()


def cli(up: UpProcess, *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--url", up.url])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_serverless_through_the_cli(up: UpProcess, tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m", INFERENCE_OK)
    cli(up, "deploy", str(model), "--name", "sls", "--serverless-memory", "2048", "--max-concurrency", "3")
    desc = up.client("sagemaker").describe_endpoint(EndpointName="sls")
    assert desc["ProductionVariants"][0]["CurrentServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 3}
    out = cli(up, "invoke", "sls", "--body", "1,0", "--content-type", "text/csv")
    assert json.loads(out.stdout) == pytest.approx([2.0])
    cli(up, "delete", "sls")


def test_async_through_the_cli_and_the_python_api(up: UpProcess, tmp_path: Path) -> None:
    s3 = up.client("s3")
    s3.create_bucket(Bucket="jobs")
    s3.put_object(Bucket="jobs", Key="in/rows.csv", Body=b"1,0\n0,1\n")
    model = make_model_dir(tmp_path / "m", INFERENCE_OK)
    cli(up, "deploy", str(model), "--name", "later", "--async-output", "s3://jobs/out/",
        "--async-failure", "s3://jobs/failed/")
    out = cli(up, "invoke-async", "later", "--input", "s3://jobs/in/rows.csv", "--content-type", "text/csv")
    lines = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    assert lines["OutputLocation"] == f"s3://jobs/out/{lines['InferenceId']}.out"
    assert json.loads(s3_object(s3, lines["OutputLocation"])) == pytest.approx([2.0, 3.0])

    endpoint = mainsail.endpoint("later", url=up.url)
    answer = endpoint.invoke_async("s3://jobs/in/rows.csv", content_type="text/csv", inference_id="py-1")
    assert answer["OutputLocation"] == "s3://jobs/out/py-1.out"
    assert json.loads(s3_object(s3, answer["OutputLocation"])) == pytest.approx([2.0, 3.0])
    endpoint.delete()

    served = mainsail.deploy(model, name="py-sls", url=up.url, serverless_memory_mb=1024, max_concurrency=1)
    assert served.invoke([[0, 1]]).json() == pytest.approx([3.0])
    served.delete()
