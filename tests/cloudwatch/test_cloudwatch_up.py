"""CloudWatch on a real ``mainsail up`` (the CLI, its own process): boto3's own client, the wire details of
each protocol (headers, error shapes) seen raw, and STS still answering the query protocol beside it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import httpx
import pytest

from tests.control.helpers import UpProcess

CBOR_PATH = "/service/GraniteServiceVersion20100801/operation/"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    process = UpProcess(tmp_path_factory.mktemp("up") / "home", env={"MAINSAIL_METRICS_TIME_SCALE": "60"})
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_text()


def test_boto3_cloudwatch_on_mainsail_up(up: UpProcess) -> None:
    cw = up.client("cloudwatch")
    assert cw.meta.service_model.protocol == "smithy-rpc-v2-cbor"
    now = float(int(time.time())) - 5
    cw.put_metric_data(Namespace="Up/Test", MetricData=[
        {"MetricName": "Hits", "Timestamp": datetime.fromtimestamp(now, UTC), "Values": [1.0, 2.0, 3.0]}])
    got = cw.get_metric_statistics(Namespace="Up/Test", MetricName="Hits", StartTime=datetime.fromtimestamp(now, UTC),
                                   EndTime=datetime.fromtimestamp(now + 1, UTC), Period=60, Statistics=["Sum"])
    assert [(p["Timestamp"].timestamp(), p["Sum"]) for p in got["Datapoints"]] == [(now, 6.0)]
    assert up.client("sts").get_caller_identity()["Account"] == "123456789012"

    # MAINSAIL_METRICS_TIME_SCALE=60: an alarm is evaluated within a second or two
    cw.put_metric_alarm(AlarmName="up-alarm", Namespace="Up/Test", MetricName="Nothing", Statistic="Sum", Period=60,
                        EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanThreshold",
                        TreatMissingData="breaching")
    deadline = time.monotonic() + 20
    while cw.describe_alarms(AlarmNames=["up-alarm"])["MetricAlarms"][0]["StateValue"] != "ALARM":
        assert time.monotonic() < deadline, up.log_text()
        time.sleep(0.1)


def test_wire_details(up: UpProcess) -> None:
    with httpx.Client(base_url=up.url, timeout=10) as http:
        ok = http.post(CBOR_PATH + "ListMetrics", content=cbor2.dumps({"Namespace": "Up/Test"}),
                       headers={"content-type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"})
        assert ok.status_code == 200 and ok.headers["smithy-protocol"] == "rpc-v2-cbor"
        assert ok.headers["content-type"] == "application/cbor" and "x-amzn-requestid" in ok.headers
        assert cbor2.loads(ok.content)["Metrics"][0]["MetricName"] == "Hits"

        bad = http.post(CBOR_PATH + "GetMetricStatistics", content=cbor2.dumps(
            {"Namespace": "N", "MetricName": "M", "StartTime": cbor2.CBORTag(1, 0), "EndTime": cbor2.CBORTag(1, 60),
             "Period": 7, "Statistics": ["Sum"]}), headers={"content-type": "application/cbor"})
        assert bad.status_code == 400 and bad.headers["x-amzn-query-error"] == "InvalidParameterValue;Sender"
        assert cbor2.loads(bad.content)["__type"] == "com.amazonaws.cloudwatch#InvalidParameterValueException"

        json_headers = {"content-type": "application/x-amz-json-1.0", "x-amzn-query-mode": "true"}
        missing = http.post("/", content=json.dumps({"Namespace": "N"}), headers={
            **json_headers, "x-amz-target": "GraniteServiceVersion20100801.GetMetricStatistics"})
        assert missing.status_code == 400 and missing.headers["x-amzn-query-error"] == "MissingParameter;Sender"
        assert missing.json()["message"] == "The parameter MetricName is required."
        # an operation whose model has no MissingRequiredParameterException: the model check's words
        unmodeled = http.post("/", content=json.dumps({"Namespace": "N"}), headers={
            **json_headers, "x-amz-target": "GraniteServiceVersion20100801.DescribeAlarmsForMetric"})
        assert unmodeled.headers["x-amzn-query-error"] == "ValidationError;Sender"
        assert unmodeled.json()["message"] == ("1 validation error detected: Value null at 'metricName' failed to "
                                               "satisfy constraint: Member must not be null")

        unknown = http.post("/", data={"Action": "DeleteDashboards", "Version": "2010-08-01"})
        assert unknown.status_code == 400 and "<Code>InvalidAction</Code>" in unknown.text
        assert "<Type>Sender</Type>" in unknown.text
        not_number = http.post("/", data={"Action": "PutMetricData", "Version": "2010-08-01", "Namespace": "N",
                                          "MetricData.member.1.MetricName": "M", "MetricData.member.1.Value": "abc"})
        assert not_number.status_code == 400 and "<Code>InvalidParameterValue</Code>" in not_number.text
        garbage = http.post(CBOR_PATH + "ListMetrics", content=b"\xff\x00", headers={"content-type": "application/cbor"})
        assert garbage.status_code == 400 and garbage.headers["x-amzn-query-error"] == "SerializationException;Sender"
        not_a_map = http.post(CBOR_PATH + "ListMetrics", content=cbor2.dumps([1]))
        assert not_a_map.status_code == 400
        listed = http.post("/", data={"Action": "ListMetrics", "Version": "2010-08-01", "Namespace": "Up/Test"})
        assert listed.status_code == 200 and listed.text.startswith(
            '<ListMetricsResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/"><ListMetricsResult>')


def test_metrics_db_in_home(up: UpProcess) -> None:
    assert (Path(up.home) / "metrics.db").exists()


def test_alarms_and_metrics_survive_restarting_mainsail_up(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = UpProcess(home, env={"MAINSAIL_METRICS_TIME_SCALE": "60"})
    try:
        cw = first.client("cloudwatch")
        cw.put_metric_alarm(AlarmName="kept", Namespace="Up/Kept", MetricName="Nothing", Statistic="Sum", Period=60,
                            EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanThreshold",
                            TreatMissingData="ignore")  # no data, ignored: evaluations keep what it is set to
        cw.set_alarm_state(AlarmName="kept", StateValue="ALARM", StateReason="set before the restart")
        cw.put_metric_data(Namespace="Up/Kept", MetricData=[{"MetricName": "Other", "Value": 1.0}])
    finally:
        assert first.stop() == 0, first.log_text()
    second = UpProcess(home, env={"MAINSAIL_METRICS_TIME_SCALE": "60"})
    try:
        cw = second.client("cloudwatch")
        alarm = cw.describe_alarms(AlarmNames=["kept"])["MetricAlarms"][0]
        assert (alarm["StateValue"], alarm["StateReason"]) == ("ALARM", "set before the restart")
        assert [m["MetricName"] for m in cw.list_metrics(Namespace="Up/Kept")["Metrics"]] == ["Other"]
    finally:
        assert second.stop() == 0, second.log_text()
