"""``mainsail metrics`` and ``mainsail scale`` against a real control plane with one-second periods
(``MAINSAIL_METRICS_TIME_SCALE=60``): the table's invocation count after a few requests, the ``--plot`` PNG,
a scalable target and its policy visible through boto3, and the errors as one-line messages."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mainsail.cli.app import app
from tests.control.helpers import INFERENCE_OK, WAIT, Plane, deploy, make_model_dir

pytestmark = pytest.mark.slow

ENDPOINT = "watched"
REQUESTS = 5
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    home = tmp_path_factory.mktemp("metrics-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAINSAIL_HOME", str(home))
        mp.setenv("MAINSAIL_METRICS_TIME_SCALE", "60")  # a one-minute period lasts a second
        with Plane(home) as p:
            sm, rt = p.client("sagemaker"), p.client("sagemaker-runtime")
            deploy(sm, ENDPOINT, make_model_dir(home / "model", INFERENCE_OK))
            sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig=WAIT)
            for _ in range(REQUESTS):
                rt.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Body=b"1,1\n")
            yield p


def mainsail(plane: Plane, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--url", plane.url], env={"MAINSAIL_METRICS_TIME_SCALE": "60"})
    return result.exit_code, result.stdout, result.stderr


def row(table: str, variant: str) -> list[str]:
    """The cells of ``variant``'s row in the rich table."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if variant in cells:
            return cells[cells.index(variant):]
    raise AssertionError(f"no row for {variant} in\n{table}")


def test_the_table_counts_the_invocations(plane: Plane) -> None:
    deadline = time.monotonic() + 30
    while True:  # the periods close every second; CPU needs two samples of the instance
        code, out, err = mainsail(plane, "metrics", ENDPOINT, "--minutes", "600")
        assert code == 0, err
        cells = row(out, "AllTraffic")
        if cells[1] == str(REQUESTS) and cells[7] != "-":
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
    assert "INVOCATIONS" in out and "LATENCY p50 (ms)" in out and "CPU %" in out
    invocations, errors_4xx, errors_5xx, p50, p99, average, cpu, memory = cells[1:9]
    assert (errors_4xx, errors_5xx) == ("0", "0")
    assert 0 < float(p50) <= float(p99) < 10_000 and 0 < float(average) < 10_000  # milliseconds
    assert 0 <= float(cpu) and 0 < float(memory) < 100


def test_plot_writes_a_png(plane: Plane, tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    code, out, err = mainsail(plane, "metrics", ENDPOINT, "--minutes", "600", "--plot", str(chart))
    assert code == 0, err
    assert f"chart written to {chart}" in out
    data = chart.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plot_without_matplotlib_names_the_extra(plane: Plane, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    code, _, err = mainsail(plane, "metrics", ENDPOINT, "--plot", str(tmp_path / "c.png"))
    assert code == 1 and "--plot needs matplotlib: pip install 'mainsail[plot]'" in err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["metrics", "nowhere"], 1, "endpoint nowhere not found"),
    (["metrics", ENDPOINT, "--plot", "chart.svg"], 2, "the chart is a PNG"),
    (["scale", ENDPOINT, "--min", "3", "--max", "2", "--target", "10"], 2, "--min 3 is above --max 2"),
    (["scale", ENDPOINT, "--min", "1", "--max", "2", "--target", "0"], 2, "give a positive value"),
    (["scale", "nowhere", "--min", "1", "--max", "2", "--target", "10"], 1, "endpoint nowhere not found"),
    (["scale", ENDPOINT, "--variant", "Nope", "--min", "1", "--max", "2", "--target", "10"], 1,
     "error: ValidationException: The endpoint variant endpoint/watched/variant/Nope does not exist"),
])
def test_errors_are_one_line(plane: Plane, args: list[str], code: int, message: str) -> None:
    exit_code, _, err = mainsail(plane, *args)
    assert exit_code == code and message in err, err
    assert "Traceback" not in err


def test_scale_registers_a_target_and_a_policy(plane: Plane) -> None:
    code, out, err = mainsail(plane, "scale", ENDPOINT, "--min", "1", "--max", "3", "--target", "100",
                              "--scale-in-cooldown", "300")
    assert code == 0, err
    resource = f"endpoint/{ENDPOINT}/variant/AllTraffic"
    assert f"registered {resource}: 1 to 3 instances" in out
    assert "policy InvocationsPerInstance-target-tracking: keeps InvocationsPerInstance at 100" in out
    assert "alarm TargetTracking-" in out

    scaling = plane.client("application-autoscaling")
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(resource, 1, 3)]
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)["ScalingPolicies"]
    config = policies[0]["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 100 and config["ScaleInCooldown"] == 300
    assert config["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    # a customized metric: the variant's CPU, from the instance namespace
    code, out, err = mainsail(plane, "scale", ENDPOINT, "--variant", "AllTraffic", "--min", "1", "--max", "2",
                              "--target", "70", "--metric", "CPUUtilization", "--policy-name", "cpu")
    assert code == 0, err
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", PolicyNames=["cpu"])["ScalingPolicies"]
    custom = policies[0]["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert (custom["Namespace"], custom["MetricName"], custom["Statistic"]) == (
        "/aws/sagemaker/Endpoints", "CPUUtilization", "Average")
