"""Alarms through real botocore clients: PutMetricAlarm, evaluation going ALARM and back to OK (the clock
60 times faster: a minute lasts a second), TreatMissingData, SetAlarmState, history, the describe filters,
actions reaching a registered callback, and alarms surviving a restart."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.cloudwatch.helpers import CloudWatchPlane, cloudwatch_client

ACTIONS = "arn:mainsail:test:"
TIMEOUT = 20.0


def _name(prefix: str = "alarm") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _alarm(cw: Any, name: str) -> dict[str, Any]:
    alarms: list[dict[str, Any]] = cw.describe_alarms(AlarmNames=[name])["MetricAlarms"]
    assert len(alarms) == 1
    return alarms[0]


def _wait_for(cw: Any, name: str, state: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        alarm = _alarm(cw, name)
        if alarm["StateValue"] == state:
            return alarm
        assert time.monotonic() < deadline, f"{name} is {alarm['StateValue']}, not {state}: {alarm['StateReason']}"
        time.sleep(0.1)


def _until(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Calls:
    """An action subscriber that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    async def __call__(self, alarm: str, state: str, reason: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((alarm, state, reason))

    def of(self, alarm: str) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(state, reason) for name, state, reason in self.calls if name == alarm]


@pytest.fixture(scope="module")
def calls(plane: CloudWatchPlane) -> Calls:
    recorder = Calls()
    plane.actions.register(ACTIONS, recorder)
    return recorder


def _put_alarm(cw: Any, name: str, ns: str, **extra: Any) -> None:
    args: dict[str, Any] = {"AlarmName": name, "Namespace": ns, "MetricName": "Load", "Statistic": "Maximum",
                            "Period": 60, "EvaluationPeriods": 1, "Threshold": 50.0,
                            "ComparisonOperator": "GreaterThanThreshold", **extra}
    cw.put_metric_alarm(**args)


def test_alarm_goes_to_alarm_and_back_to_ok(cw: Any, calls: Calls) -> None:
    name, ns = _name(), f"Test/{uuid.uuid4().hex[:8]}"
    _put_alarm(cw, name, ns, AlarmActions=[ACTIONS + "alarm"], OKActions=[ACTIONS + "ok"],
               Dimensions=[{"Name": "Host", "Value": "a"}])
    created = _alarm(cw, name)
    assert created["StateValue"] == "INSUFFICIENT_DATA" and created["ActionsEnabled"] is True
    assert created["AlarmArn"].endswith(f":alarm:{name}") and created["Dimensions"] == [{"Name": "Host", "Value": "a"}]

    now = float(int(time.time()))
    high = [{"MetricName": "Load", "Dimensions": [{"Name": "Host", "Value": "a"}], "Timestamp": _at(now + i),
             "Value": 100.0} for i in range(2)]
    cw.put_metric_data(Namespace=ns, MetricData=high)
    alarm = _wait_for(cw, name, "ALARM")
    assert alarm["StateReason"].startswith("Threshold Crossed: 1 out of the last 1 datapoints [100")
    assert json.loads(alarm["StateReasonData"])["threshold"] == 50.0

    later = float(int(time.time())) + 2
    low = [{"MetricName": "Load", "Dimensions": [{"Name": "Host", "Value": "a"}], "Timestamp": _at(later + i),
            "Value": 1.0} for i in range(8)]
    cw.put_metric_data(Namespace=ns, MetricData=low)
    _wait_for(cw, name, "OK")

    _until(lambda: [s for s, _ in calls.of(name)] == ["ALARM", "OK"])
    state, reason = calls.of(name)[0]
    assert reason["threshold"] == 50.0 and reason["recentDatapoints"] == [100.0]
    history = cw.describe_alarm_history(AlarmName=name, HistoryItemType="StateUpdate")["AlarmHistoryItems"]
    summaries = [h["HistorySummary"] for h in reversed(history)]
    assert summaries[0] == "Alarm updated from INSUFFICIENT_DATA to ALARM" and summaries[-1].endswith("to OK")
    actions = cw.describe_alarm_history(AlarmName=name, HistoryItemType="Action")["AlarmHistoryItems"]
    assert {h["HistorySummary"] for h in actions} == {f"Successfully executed action {ACTIONS}alarm",
                                                      f"Successfully executed action {ACTIONS}ok"}
    cw.delete_alarms(AlarmNames=[name])


@pytest.mark.parametrize(("treat", "state"), [("breaching", "ALARM"), ("notBreaching", "OK"),
                                              ("missing", "INSUFFICIENT_DATA"), ("ignore", "INSUFFICIENT_DATA")])
def test_treat_missing_data(clients: dict[str, Any], treat: str, state: str) -> None:
    cw = clients["smithy-rpc-v2-cbor"]
    name = _name(treat)
    _put_alarm(cw, name, "Test/NoData", TreatMissingData=treat, EvaluationPeriods=2, DatapointsToAlarm=2)
    # a sibling whose name sorts after it goes OK in the pass that evaluated it (one pass takes them in order)
    sibling = f"{name}-sibling"
    _put_alarm(cw, sibling, "Test/NoData", TreatMissingData="notBreaching")
    _wait_for(cw, sibling, "OK")
    assert _alarm(cw, name)["StateValue"] == state
    assert _alarm(cw, name)["TreatMissingData"] == treat
    cw.delete_alarms(AlarmNames=[name, sibling])


def test_set_alarm_state_holds_until_the_next_evaluation(cw: Any, calls: Calls) -> None:
    name = _name("set")
    _put_alarm(cw, name, "Test/NoData", TreatMissingData="notBreaching", AlarmActions=[ACTIONS + "set"])
    _wait_for(cw, name, "OK")
    cw.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="testing",
                       StateReasonData=json.dumps({"why": "a test"}))
    alarm = _alarm(cw, name)  # checked at once: the next evaluation (within a second) moves it back
    if alarm["StateValue"] == "ALARM":
        assert alarm["StateReason"] == "testing" and json.loads(alarm["StateReasonData"]) == {"why": "a test"}
    _until(lambda: calls.of(name) == [("ALARM", {"why": "a test"})])
    _wait_for(cw, name, "OK")
    history = cw.describe_alarm_history(AlarmName=name, HistoryItemType="StateUpdate",
                                        ScanBy="TimestampAscending")["AlarmHistoryItems"]
    data = [json.loads(h["HistoryData"]) for h in history]
    assert {"stateValue": "ALARM", "stateReason": "testing", "stateReasonData": {"why": "a test"}} in \
        [d["newState"] for d in data]

    with pytest.raises(ClientError) as exc:
        cw.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="x", StateReasonData="{not json")
    assert exc.value.response["Error"]["Code"] == "InvalidFormat"
    with pytest.raises(ClientError) as exc:
        cw.set_alarm_state(AlarmName=_name("nobody"), StateValue="ALARM", StateReason="x")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFound"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    cw.delete_alarms(AlarmNames=[name])


def test_describe_filters_paging_and_delete(cw: Any) -> None:
    prefix = _name("filter")
    for i in range(3):
        _put_alarm(cw, f"{prefix}-{i}", "Test/Filter", AlarmActions=[f"{ACTIONS}{prefix}/{i}"],
                   Dimensions=[{"Name": "Shard", "Value": str(i)}])
    names = [a["AlarmName"] for a in cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]]
    assert names == [f"{prefix}-{i}" for i in range(3)]
    by_action = cw.describe_alarms(ActionPrefix=f"{ACTIONS}{prefix}/1")["MetricAlarms"]
    assert [a["AlarmName"] for a in by_action] == [f"{prefix}-1"]
    pages = list(cw.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix, PaginationConfig={"PageSize": 2}))
    assert [len(p["MetricAlarms"]) for p in pages] == [2, 1]
    assert cw.describe_alarms(AlarmNamePrefix=prefix, StateValue="ALARM")["MetricAlarms"] == []
    for_metric = cw.describe_alarms_for_metric(Namespace="Test/Filter", MetricName="Load",
                                               Dimensions=[{"Name": "Shard", "Value": "2"}])["MetricAlarms"]
    assert [a["AlarmName"] for a in for_metric] == [f"{prefix}-2"]

    cw.disable_alarm_actions(AlarmNames=[f"{prefix}-0"])
    assert _alarm(cw, f"{prefix}-0")["ActionsEnabled"] is False
    cw.enable_alarm_actions(AlarmNames=[f"{prefix}-0"])
    assert _alarm(cw, f"{prefix}-0")["ActionsEnabled"] is True

    with pytest.raises(ClientError) as exc:
        cw.describe_alarms(AlarmNames=[f"{prefix}-0"], AlarmNamePrefix=prefix)
    assert exc.value.response["Error"]["Code"] == "InvalidParameterCombination"
    with pytest.raises(ClientError) as exc:
        cw.delete_alarms(AlarmNames=[f"{prefix}-0", _name("missing")])
    assert exc.value.response["Error"]["Code"] == "ResourceNotFound"
    cw.delete_alarms(AlarmNames=[f"{prefix}-{i}" for i in range(3)])
    assert cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"] == []


def test_bad_alarms(cw: Any) -> None:
    base = {"AlarmName": _name("bad"), "Namespace": "N", "MetricName": "M", "Period": 60, "EvaluationPeriods": 1,
            "Threshold": 1.0, "ComparisonOperator": "GreaterThanThreshold"}
    for extra, code in (({}, "InvalidParameterCombination"),  # neither Statistic nor ExtendedStatistic
                        ({"Statistic": "Sum", "Period": 45}, "InvalidParameterValue"),
                        ({"Statistic": "Sum", "DatapointsToAlarm": 2}, "InvalidParameterValue"),
                        ({"Statistic": "Sum", "TreatMissingData": "sometimes"}, "InvalidParameterValue"),
                        ({"Statistic": "Sum", "ComparisonOperator": "Above"}, "ValidationError")):
        with pytest.raises(ClientError) as exc:
            cw.put_metric_alarm(**{**base, **extra})
        assert exc.value.response["Error"]["Code"] == code, (extra, exc.value.response["Error"])


def test_alarm_over_metric_math(clients: dict[str, Any]) -> None:
    cw = clients["json"]
    name, ns = _name("math"), f"Test/{uuid.uuid4().hex[:8]}"
    cw.put_metric_alarm(AlarmName=name, EvaluationPeriods=1, Threshold=0.5, ComparisonOperator="GreaterThanThreshold",
                        Metrics=[{"Id": "e", "ReturnData": False, "MetricStat": {
                                     "Metric": {"Namespace": ns, "MetricName": "Errors"}, "Period": 60, "Stat": "Sum"}},
                                 {"Id": "r", "ReturnData": False, "MetricStat": {
                                     "Metric": {"Namespace": ns, "MetricName": "Requests"}, "Period": 60,
                                     "Stat": "Sum"}},
                                 {"Id": "rate", "Expression": "e / r", "ReturnData": True}])
    now = float(int(time.time()))
    cw.put_metric_data(Namespace=ns, MetricData=[
        *({"MetricName": "Errors", "Timestamp": _at(now + i), "Value": 9.0} for i in range(2)),
        *({"MetricName": "Requests", "Timestamp": _at(now + i), "Value": 10.0} for i in range(2))])
    _wait_for(cw, name, "ALARM")
    cw.delete_alarms(AlarmNames=[name])


def test_alarms_survive_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with CloudWatchPlane(home) as first:
        cw = cloudwatch_client(first.url, "smithy-rpc-v2-cbor", tmp_path)
        # no data and TreatMissingData=ignore: evaluations keep whatever state it is set to
        _put_alarm(cw, "kept", "Test/Restart", AlarmActions=["arn:aws:sns:us-east-1:123456789012:topic"],
                   TreatMissingData="ignore")
        cw.set_alarm_state(AlarmName="kept", StateValue="ALARM", StateReason="before the restart")
        cw.put_metric_data(Namespace="Test/Restart", MetricData=[{"MetricName": "Other", "Value": 3.0}])
    with CloudWatchPlane(home) as second:
        cw = cloudwatch_client(second.url, "smithy-rpc-v2-cbor", tmp_path)
        alarm = _alarm(cw, "kept")
        assert (alarm["StateValue"], alarm["StateReason"]) == ("ALARM", "before the restart")
        assert alarm["AlarmActions"] == ["arn:aws:sns:us-east-1:123456789012:topic"]
        history = cw.describe_alarm_history(AlarmName="kept")["AlarmHistoryItems"]
        assert {h["HistoryItemType"] for h in history} >= {"ConfigurationUpdate", "StateUpdate"}
        assert [m["MetricName"] for m in cw.list_metrics(Namespace="Test/Restart")["Metrics"]] == ["Other"]


def test_auto_scaling_actions_repeat_while_the_state_holds(plane: CloudWatchPlane, clients: dict[str, Any]) -> None:
    cw, name = clients["smithy-rpc-v2-cbor"], _name("scaling")
    arn = f"arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:{name}"
    recorder = Calls()
    plane.actions.register(arn, recorder)  # the longest prefix wins over any shorter one
    try:
        _put_alarm(cw, name, "Test/NoData", TreatMissingData="breaching", AlarmActions=[arn])
        _until(lambda: len(recorder.of(name)) >= 3)  # once a (scaled) minute, not only on the change
        assert {state for state, _ in recorder.of(name)} == {"ALARM"}
        assert all(reason["threshold"] == 50.0 for _, reason in recorder.of(name))
        actions = cw.describe_alarm_history(AlarmName=name, HistoryItemType="Action")["AlarmHistoryItems"]
        assert len(actions) == 1  # the history has the change's action only
    finally:
        plane.actions.unregister(arn)
        cw.delete_alarms(AlarmNames=[name])
