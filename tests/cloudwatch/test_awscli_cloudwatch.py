"""The AWS CLI (its own environment: awscli pins its own botocore) against a real ``mainsail up``:
``aws cloudwatch put-metric-data`` / ``get-metric-statistics`` / ``put-metric-alarm`` / ``describe-alarms``
and ``aws application-autoscaling describe-scalable-targets``, with CloudWatch's errors as the CLI shows them."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control.helpers import UpProcess

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def aws_cli() -> Path:
    out = subprocess.run([str(ROOT / "scripts" / "sdk-venv"), "awscli"], capture_output=True, text=True,
                         timeout=1200, check=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "bin" / "aws"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    process = UpProcess(tmp_path_factory.mktemp("awscli-cloudwatch") / "home")
    yield process
    assert process.stop() == 0, process.log_text()


def aws(up: UpProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIAAWSCLI", AWS_SECRET_ACCESS_KEY="secret", AWS_DEFAULT_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    return subprocess.run([str(aws_cli()), "--endpoint-url", up.url, "--output", "json", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def answer(up: UpProcess, *args: str) -> Any:
    result = aws(up, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else None


def iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_put_metric_data_then_get_metric_statistics(up: UpProcess) -> None:
    now = dt.datetime.now(dt.UTC)
    data = [{"MetricName": "Latency", "Values": [12, 15, 40], "Unit": "Milliseconds", "Timestamp": iso(now),
             "Dimensions": [{"Name": "Service", "Value": "web"}]}]
    answer(up, "cloudwatch", "put-metric-data", "--namespace", "CliApp", "--metric-data", json.dumps(data))
    # the shorthand form the CLI offers for one value
    answer(up, "cloudwatch", "put-metric-data", "--namespace", "CliApp", "--metric-name", "Latency",
           "--value", "33", "--unit", "Milliseconds", "--dimensions", "Service=web", "--timestamp", iso(now))

    window = ("--namespace", "CliApp", "--metric-name", "Latency", "--dimensions", "Name=Service,Value=web",
              "--start-time", iso(now - dt.timedelta(minutes=5)), "--end-time", iso(now + dt.timedelta(minutes=5)),
              "--period", "3600")
    stats = answer(up, "cloudwatch", "get-metric-statistics", *window,
                   "--statistics", "SampleCount", "Sum", "Minimum", "Maximum")
    assert stats["Label"] == "Latency"
    [point] = stats["Datapoints"]
    assert (point["SampleCount"], point["Sum"], point["Minimum"], point["Maximum"], point["Unit"]) == (
        4.0, 100.0, 12.0, 40.0, "Milliseconds")
    extended = answer(up, "cloudwatch", "get-metric-statistics", *window, "--extended-statistics", "p50", "p99")
    percentiles = extended["Datapoints"][0]["ExtendedStatistics"]
    assert percentiles["p50"] == pytest.approx(15, rel=0.01) and percentiles["p99"] == pytest.approx(40, rel=0.01)

    listed = answer(up, "cloudwatch", "list-metrics", "--namespace", "CliApp")
    assert [m["MetricName"] for m in listed["Metrics"]] == ["Latency"]


def test_cloudwatch_errors_reach_the_cli(up: UpProcess) -> None:
    now = dt.datetime.now(dt.UTC)
    result = aws(up, "cloudwatch", "get-metric-statistics", "--namespace", "CliApp", "--metric-name", "Latency",
                 "--start-time", iso(now - dt.timedelta(minutes=5)), "--end-time", iso(now), "--period", "7",
                 "--statistics", "Sum")
    assert result.returncode != 0
    assert "InvalidParameterValue" in result.stderr and "1, 5, 10, 30, or a multiple of 60" in result.stderr
    refused = aws(up, "cloudwatch", "put-metric-data", "--namespace", "AWS/Mine", "--metric-name", "m",
                  "--value", "1")
    assert refused.returncode != 0 and "InvalidParameterValue" in refused.stderr


def test_put_metric_alarm_then_describe_alarms(up: UpProcess) -> None:
    answer(up, "cloudwatch", "put-metric-alarm", "--alarm-name", "cli-slow", "--namespace", "CliApp",
           "--metric-name", "Latency", "--dimensions", "Name=Service,Value=web", "--extended-statistic", "p99",
           "--period", "60", "--evaluation-periods", "3", "--datapoints-to-alarm", "2", "--threshold", "100",
           "--comparison-operator", "GreaterThanThreshold", "--treat-missing-data", "notBreaching")
    described = answer(up, "cloudwatch", "describe-alarms", "--alarm-names", "cli-slow")
    [alarm] = described["MetricAlarms"]
    assert (alarm["AlarmName"], alarm["ExtendedStatistic"], alarm["Threshold"], alarm["EvaluationPeriods"],
            alarm["DatapointsToAlarm"], alarm["TreatMissingData"]) == ("cli-slow", "p99", 100.0, 3, 2, "notBreaching")
    assert alarm["StateValue"] in ("INSUFFICIENT_DATA", "OK")
    assert alarm["AlarmArn"].endswith(":alarm:cli-slow")
    assert answer(up, "cloudwatch", "describe-alarms", "--alarm-name-prefix", "nothing-")["MetricAlarms"] == []

    answer(up, "cloudwatch", "set-alarm-state", "--alarm-name", "cli-slow", "--state-value", "ALARM",
           "--state-reason", "from the cli")
    alarming = answer(up, "cloudwatch", "describe-alarms", "--state-value", "ALARM")
    assert [a["AlarmName"] for a in alarming["MetricAlarms"]] == ["cli-slow"]
    answer(up, "cloudwatch", "delete-alarms", "--alarm-names", "cli-slow")
    assert answer(up, "cloudwatch", "describe-alarms", "--alarm-names", "cli-slow")["MetricAlarms"] == []


def test_application_autoscaling_describe_scalable_targets(up: UpProcess) -> None:
    described = answer(up, "application-autoscaling", "describe-scalable-targets", "--service-namespace", "sagemaker")
    assert described["ScalableTargets"] == []
    missing = aws(up, "application-autoscaling", "register-scalable-target", "--service-namespace", "sagemaker",
                  "--resource-id", "endpoint/nowhere/variant/AllTraffic",
                  "--scalable-dimension", "sagemaker:variant:DesiredInstanceCount",
                  "--min-capacity", "1", "--max-capacity", "2")
    assert missing.returncode != 0 and "ValidationException" in missing.stderr
    assert "endpoint/nowhere/variant/AllTraffic does not exist" in missing.stderr
