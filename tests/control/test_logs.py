"""CloudWatch Logs on the control plane's port: the log-file reader on synthetic files, and the real
boto3 ``logs`` client against real instances."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import WaiterError

from mainsail.aws.logs import files as logs
from mainsail.aws.logs.api import LogsApi
from mainsail.aws.logs.errors import InvalidParameterException, ResourceNotFoundException
from mainsail.aws.logs.patterns import parse_pattern
from mainsail.serve.access_log import FLUSH_S
from tests.control.helpers import INFERENCE_BAD, WAIT, Plane, deploy, make_model_dir

GROUP = "/aws/sagemaker/Endpoints/ep"
STREAM = "AllTraffic/i-0-5000"


def _ms(stamp: str) -> int:
    """ms since the epoch of a ``logging`` timestamp (local time)."""
    return int(dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000)


def _write(home: Path, text: str, name: str = "AllTraffic-0-5000.log", *, settled: bool = True) -> Path:
    path = home / "logs" / "ep" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)
    if settled:
        old = time.time() - 60
        os.utime(path, (old, old))
    return path


SAMPLE = """leading print before logging is set up
2026-11-23 14:42:15,949 INFO [12] mainsail.serve: starting
hello from print

2026-11-23 14:42:16,001 ERROR [12] mainsail.x: failed
Traceback (most recent call last):
  File "x.py", line 1
RuntimeError: boom
2026-11-23 14:42:17,500 INFO [12] mainsail.serve: done
"""


def _get(api: LogsApi, **kw: Any) -> dict[str, Any]:
    return api.get_log_events({"logGroupName": GROUP, "logStreamName": STREAM, **kw}, "us-east-1")


def _filter(api: LogsApi, **kw: Any) -> dict[str, Any]:
    return api.filter_log_events({"logGroupName": GROUP, **kw}, "us-east-1")


def test_timestamps_and_continuation_lines(tmp_path: Path) -> None:
    _write(tmp_path, SAMPLE)
    events = _get(LogsApi(tmp_path), startFromHead=True)["events"]
    t1, t2, t3 = _ms("2026-11-23 14:42:15,949"), _ms("2026-11-23 14:42:16,001"), _ms("2026-11-23 14:42:17,500")
    assert [(e["timestamp"], e["message"]) for e in events] == [
        (t1, "leading print before logging is set up"),  # before the first stamp: that stamp
        (t1, "2026-11-23 14:42:15,949 INFO [12] mainsail.serve: starting"),
        (t1, "hello from print"),  # the blank line is no event
        (t2, "2026-11-23 14:42:16,001 ERROR [12] mainsail.x: failed"),
        (t2, "Traceback (most recent call last):"),
        (t2, '  File "x.py", line 1'),
        (t2, "RuntimeError: boom"),
        (t3, "2026-11-23 14:42:17,500 INFO [12] mainsail.serve: done"),
    ]
    assert all(e["ingestionTime"] == e["timestamp"] for e in events)


def test_file_without_any_timestamp_uses_its_mtime(tmp_path: Path) -> None:
    path = _write(tmp_path, "just\nprints\n")
    events = _get(LogsApi(tmp_path), startFromHead=True)["events"]
    assert [e["timestamp"] for e in events] == [int(path.stat().st_mtime * 1000)] * 2


def test_unfinished_last_line_waits_until_the_file_settles(tmp_path: Path) -> None:
    path = _write(tmp_path, "2026-11-23 14:42:15,949 INFO [1] a: one\npartial", settled=False)
    api = LogsApi(tmp_path)
    assert [e["message"] for e in _get(api)["events"]] == ["2026-11-23 14:42:15,949 INFO [1] a: one"]
    old = time.time() - 60
    os.utime(path, (old, old))
    assert [e["message"] for e in _get(api)["events"]][-1] == "partial"


def test_get_log_events_tokens_both_ways(tmp_path: Path) -> None:
    _write(tmp_path, SAMPLE)
    api = LogsApi(tmp_path)
    everything = [e["message"] for e in _get(api, startFromHead=True)["events"]]
    assert len(everything) == 8
    # forward from the head, 3 at a time, until the same token comes back (CloudWatch's end signal)
    page = _get(api, startFromHead=True, limit=3)
    seen, token = [e["message"] for e in page["events"]], page["nextForwardToken"]
    assert seen == everything[:3]
    while True:
        page = _get(api, nextToken=token, limit=3)
        if page["nextForwardToken"] == token:
            assert page["events"] == []
            break
        seen += [e["message"] for e in page["events"]]
        token = page["nextForwardToken"]
    assert seen == everything
    # backward from the tail (the default: startFromHead false gives the newest events)
    page = _get(api, limit=3)
    assert [e["message"] for e in page["events"]] == everything[-3:]
    back, token = [e["message"] for e in page["events"]], page["nextBackwardToken"]
    while True:
        page = _get(api, nextToken=token, limit=3)
        if page["nextBackwardToken"] == token:
            assert page["events"] == []
            break
        back = [e["message"] for e in page["events"]] + back
        token = page["nextBackwardToken"]
    assert back == everything
    # a backward page's forward token continues after it
    page = _get(api, limit=3)
    earlier = _get(api, nextToken=page["nextBackwardToken"], limit=2)
    again = _get(api, nextToken=earlier["nextForwardToken"], limit=3)
    assert again["events"] == page["events"]
    # new lines show up behind a forward token
    end = _get(api, startFromHead=True)["nextForwardToken"]
    _write(tmp_path, "2026-11-23 14:42:18,000 INFO [12] mainsail.serve: later\n")
    assert [e["message"] for e in _get(api, nextToken=end)["events"]] == [
        "2026-11-23 14:42:18,000 INFO [12] mainsail.serve: later"]


def test_time_windows(tmp_path: Path) -> None:
    _write(tmp_path, SAMPLE)
    api = LogsApi(tmp_path)
    t2, t3 = _ms("2026-11-23 14:42:16,001"), _ms("2026-11-23 14:42:17,500")
    # GetLogEvents: endTime exclusive; FilterLogEvents: endTime inclusive
    got = _get(api, startFromHead=True, startTime=t2, endTime=t3)["events"]
    assert {e["timestamp"] for e in got} == {t2} and len(got) == 4
    got = _filter(api, startTime=t2, endTime=t3)["events"]
    assert {e["timestamp"] for e in got} == {t2, t3} and len(got) == 5
    assert _filter(api, startTime=t3 + 1)["events"] == []
    with pytest.raises(InvalidParameterException):
        _filter(api, startTime=t3, endTime=t2)


def test_filter_patterns() -> None:
    def matches(pattern: str, message: str) -> bool:
        match = parse_pattern(pattern)
        return True if match is None else match(message)

    assert matches("", "anything")
    assert matches("ERROR boom", "ERROR: boom happened")
    assert not matches("ERROR boom", "ERROR only")
    assert not matches("error", "ERROR")  # case sensitive, as CloudWatch
    assert matches('"boom happened"', "ERROR: boom happened")
    assert not matches('"happened boom"', "ERROR: boom happened")
    assert matches("?WARN ?ERROR", "ERROR x") and matches("?WARN ?ERROR", "WARN x")
    assert not matches("?WARN ?ERROR", "INFO x")
    assert matches('?"a b" ?c', "ab x") is False and matches('?"a b" ?c', "a b")
    assert matches("ERROR -retrying", "ERROR final") and not matches("ERROR -retrying", "ERROR retrying")
    assert matches(r'"say \"hi\""', 'they say "hi"')
    for bad in ['"unbalanced', "{ $.level = 1 }", "[ip, user]", "%regex%", 'a"b']:
        with pytest.raises(InvalidParameterException):
            parse_pattern(bad)


def test_filter_across_streams_with_pagination(tmp_path: Path) -> None:
    _write(tmp_path, "2026-11-23 10:00:00,000 INFO [1] a: one\n2026-11-23 10:00:02,000 INFO [1] a: three\n")
    _write(tmp_path, "2026-11-23 10:00:01,000 INFO [2] b: two\n2026-11-23 10:00:03,000 INFO [2] b: four\n",
           name="AllTraffic-1-5001.log")
    _write(tmp_path, "2026-11-23 10:00:01,500 INFO [3] c: other variant\n", name="Canary-0-5002.log")
    api = LogsApi(tmp_path)
    out = _filter(api)
    assert [e["message"].split(": ")[-1] for e in out["events"]] == [
        "one", "two", "other variant", "three", "four"]  # interleaved by time
    assert "nextToken" not in out
    assert len({e["eventId"] for e in out["events"]}) == 5
    assert [s["logStreamName"] for s in out["searchedLogStreams"]] == [
        "AllTraffic/i-0-5000", "AllTraffic/i-1-5001", "Canary/i-0-5002"]
    got, token = [], None
    while True:
        page = _filter(api, logStreamNamePrefix="AllTraffic/", limit=1, **({"nextToken": token} if token else {}))
        got += [(e["logStreamName"], e["message"].split(": ")[-1]) for e in page["events"]]
        token = page.get("nextToken")
        if token is None:
            break
    assert got == [("AllTraffic/i-0-5000", "one"), ("AllTraffic/i-1-5001", "two"),
                   ("AllTraffic/i-0-5000", "three"), ("AllTraffic/i-1-5001", "four")]
    out = _filter(api, logStreamNames=["Canary/i-0-5002"])
    assert [e["logStreamName"] for e in out["events"]] == ["Canary/i-0-5002"]
    with pytest.raises(InvalidParameterException):
        _filter(api, logStreamNames=["x"], logStreamNamePrefix="A")


def test_describe_streams_and_groups(tmp_path: Path) -> None:
    _write(tmp_path, SAMPLE)
    _write(tmp_path, "2026-11-23 15:00:00,000 INFO [2] b: x\n", name="AllTraffic-1-5001.log")
    _write(tmp_path, "2026-11-23 09:00:00,000 INFO [3] c: y\n", name="Canary-0-5002.log")
    api = LogsApi(tmp_path)
    out = api.describe_log_streams({"logGroupName": GROUP}, "eu-west-1")
    streams = out["logStreams"]
    assert [s["logStreamName"] for s in streams] == ["AllTraffic/i-0-5000", "AllTraffic/i-1-5001", "Canary/i-0-5002"]
    first = streams[0]
    assert first["firstEventTimestamp"] == _ms("2026-11-23 14:42:15,949")
    assert first["lastEventTimestamp"] == _ms("2026-11-23 14:42:17,500")
    assert first["storedBytes"] == len(SAMPLE)
    assert first["arn"] == ("arn:aws:logs:eu-west-1:123456789012:log-group:/aws/sagemaker/Endpoints/ep:"
                            "log-stream:AllTraffic/i-0-5000")
    by_time = api.describe_log_streams({"logGroupName": GROUP, "orderBy": "LastEventTime", "descending": True},
                                       "us-east-1")["logStreams"]
    assert [s["logStreamName"] for s in by_time] == ["AllTraffic/i-1-5001", "AllTraffic/i-0-5000", "Canary/i-0-5002"]
    prefixed = api.describe_log_streams({"logGroupName": GROUP, "logStreamNamePrefix": "Can"}, "us-east-1")
    assert [s["logStreamName"] for s in prefixed["logStreams"]] == ["Canary/i-0-5002"]
    page = api.describe_log_streams({"logGroupName": GROUP, "limit": 2}, "us-east-1")
    rest = api.describe_log_streams({"logGroupName": GROUP, "limit": 2, "nextToken": page["nextToken"]}, "us-east-1")
    assert len(page["logStreams"]) == 2 and [s["logStreamName"] for s in rest["logStreams"]] == ["Canary/i-0-5002"]
    assert "nextToken" not in rest
    with pytest.raises(InvalidParameterException):
        api.describe_log_streams({"logGroupName": GROUP, "orderBy": "LastEventTime", "logStreamNamePrefix": "A"},
                                 "us-east-1")
    groups = api.describe_log_groups({"logGroupNamePrefix": "/aws/sagemaker/"}, "us-east-1")["logGroups"]
    assert [g["logGroupName"] for g in groups] == [GROUP]
    assert groups[0]["storedBytes"] == len(SAMPLE) + 38 + 38
    assert api.describe_log_groups({"logGroupNamePrefix": "/aws/lambda/"}, "us-east-1")["logGroups"] == []
    with pytest.raises(ResourceNotFoundException, match="log group does not exist"):
        api.describe_log_streams({"logGroupName": "/aws/sagemaker/Endpoints/nope"}, "us-east-1")
    with pytest.raises(ResourceNotFoundException, match="log stream does not exist"):
        _get(api, logStreamName="AllTraffic/i-9-9")
    with pytest.raises(ResourceNotFoundException, match="log stream does not exist"):
        _get(api, logStreamName="../../etc/passwd")


def _big_file(home: Path, lines: int) -> Path:
    base = dt.datetime(2026, 11, 23, 8, 0, 0)
    text = "".join(f"{(base + dt.timedelta(milliseconds=10 * i)).strftime('%Y-%m-%d %H:%M:%S')},"
                   f"{(10 * i) % 1000:03d} INFO [7] mainsail.serve: line {i:08d} " + "x" * 60 + "\n"
                   for i in range(lines))
    return _write(home, text)


def test_huge_file_is_indexed_once_and_read_in_bounded_pieces(tmp_path: Path) -> None:
    path = _big_file(tmp_path, 120_000)  # ~12 MB
    size = path.stat().st_size
    api = LogsApi(tmp_path)
    last = _get(api, limit=5)["events"]
    assert last[-1]["message"].split()[6] == "00119999"
    lf = api._files[path]
    assert size <= lf.bytes_read < size + 2 * logs.CHUNK  # one indexing pass (+ the tail)
    before = lf.bytes_read
    _get(api, limit=5)
    assert lf.bytes_read - before < 2 * logs.CHUNK
    before = lf.bytes_read
    first = _filter(api, limit=3)
    assert [e["message"].split()[6] for e in first["events"]] == ["00000000", "00000001", "00000002"]
    assert "nextToken" in first
    assert lf.bytes_read - before < 2 * logs.CHUNK
    # a time window in the middle reads only the chunks around it
    t = _ms("2026-11-23 08:10:00,000")  # line 60000
    before = lf.bytes_read
    window = _filter(api, startTime=t, endTime=t + 50)["events"]
    assert [e["message"].split()[6] for e in window] == [f"{i:08d}" for i in range(60000, 60006)]
    assert lf.bytes_read - before < 3 * logs.CHUNK
    # appending reads only what was appended
    _write(tmp_path, "2026-11-23 09:00:00,000 INFO [7] mainsail.serve: appended\n")
    before = lf.bytes_read
    assert _get(api, limit=1)["events"][0]["message"].endswith("appended")
    assert lf.bytes_read - before < 2 * logs.CHUNK


def test_a_search_over_budget_answers_with_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _big_file(tmp_path, 40_000)  # ~4 MB
    _write(tmp_path, "2026-11-23 09:00:00,000 ERROR [7] mainsail.serve: needle\n")
    monkeypatch.setattr(logs, "SCAN_BUDGET", logs.CHUNK)
    api = LogsApi(tmp_path)
    pages, found, token = 0, [], None
    while True:
        page = _filter(api, filterPattern="needle", **({"nextToken": token} if token else {}))
        pages += 1
        found += [e["message"] for e in page["events"]]
        token = page.get("nextToken")
        if token is None:
            break
    assert found == ["2026-11-23 09:00:00,000 ERROR [7] mainsail.serve: needle"]
    assert pages > 5


# -- the real boto3 client against real instances -------------------------------------------------

LOGGING_SCRIPT = """
import logging
import os
import joblib

log = logging.getLogger("user.model")

def model_fn(model_dir):
    log.warning("loading the linear model")
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    print("MARKER-PREDICT rows=%d" % len(data), flush=True)
    log.warning("scored %d rows", len(data))
    return model.predict(data)
"""


def _wait_for(call: Any, predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        out = call()
        if predicate(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


@pytest.mark.slow
def test_boto3_logs_client_reads_instance_logs(plane: Plane, tmp_path: Path) -> None:
    sm, rt, cw = plane.client("sagemaker"), plane.client("sagemaker-runtime"), plane.client("logs")
    deploy(sm, "logged", make_model_dir(tmp_path / "model", LOGGING_SCRIPT))
    sm.get_waiter("endpoint_in_service").wait(EndpointName="logged", WaiterConfig=WAIT)
    before = int(time.time() * 1000) - 1
    for _ in range(3):
        rt.invoke_endpoint(EndpointName="logged", ContentType="text/csv", Body=b"1,1\n2,0\n")
    group = "/aws/sagemaker/Endpoints/logged"

    (log_file,) = (tmp_path / "logs" / "logged").iterdir()
    port = log_file.name.split("-")[-1].removesuffix(".log")
    streams = cw.describe_log_streams(logGroupName=group)["logStreams"]
    assert [s["logStreamName"] for s in streams] == [f"AllTraffic/i-0-{port}"]
    assert streams[0]["arn"].endswith(f":log-group:{group}:log-stream:AllTraffic/i-0-{port}")
    assert streams[0]["firstEventTimestamp"] <= streams[0]["lastEventTimestamp"]
    assert [g["logGroupName"] for g in cw.describe_log_groups(logGroupNamePrefix=group)["logGroups"]] == [group]

    # the SDK v3 ModelBuilder's probe, then what users type
    out = _wait_for(lambda: cw.filter_log_events(logGroupName=group, logStreamNamePrefix="AllTraffic/",
                                                 filterPattern='"MARKER-PREDICT"'),
                    lambda o: len(o["events"]) == 3)
    assert [e["message"] for e in out["events"]] == ["MARKER-PREDICT rows=2"] * 3
    assert all(e["logStreamName"] == f"AllTraffic/i-0-{port}" for e in out["events"])
    assert all(e["timestamp"] >= before - 1000 for e in out["events"])  # print lines: the last log's time
    scored = _wait_for(lambda: cw.filter_log_events(logGroupName=group, filterPattern="scored rows", startTime=before),
                       lambda o: len(o["events"]) == 3)["events"]
    assert len(scored) == 3 and all("WARNING" in e["message"] and "user.model" in e["message"] for e in scored)
    assert cw.filter_log_events(logGroupName=group, filterPattern="?loading ?nothing-like-this")["events"][0][
        "message"].endswith("loading the linear model")
    assert cw.filter_log_events(logGroupName=group, startTime=int(time.time() * 1000) + 60_000)["events"] == []

    # pagination with a small limit (the boto3 paginator follows nextToken) gives what one call gives. The
    # access log is written in batches (serve.access_log.FLUSH_S) with each request's own time, so a line can
    # land after the call that read the lines around it: both reads end at a time whose lines are all written.
    until = int(time.time() * 1000)
    time.sleep(FLUSH_S + 1.0)
    everything = cw.filter_log_events(logGroupName=group, endTime=until)["events"]
    assert len(everything) > 6
    paged = [e for page in cw.get_paginator("filter_log_events").paginate(
        logGroupName=group, endTime=until, PaginationConfig={"PageSize": 2}) for e in page["events"]]
    assert [e["eventId"] for e in paged] == [e["eventId"] for e in everything]

    stream = f"AllTraffic/i-0-{port}"
    head = cw.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True, limit=2)
    assert [e["message"] for e in head["events"]] == [e["message"] for e in everything[:2]]
    tail = cw.get_log_events(logGroupName=group, logStreamName=stream, limit=2)
    latest = cw.get_log_events(logGroupName=group, logStreamName=stream, nextToken=tail["nextForwardToken"])
    assert latest["events"] == [] and latest["nextForwardToken"] == tail["nextForwardToken"]
    earlier = cw.get_log_events(logGroupName=group, logStreamName=stream, nextToken=tail["nextBackwardToken"],
                                limit=2)
    assert len(earlier["events"]) == 2

    missing = cw.exceptions.ResourceNotFoundException
    with pytest.raises(missing) as exc:
        cw.filter_log_events(logGroupName="/aws/sagemaker/Endpoints/nope")
    assert exc.value.response["Error"] == {"Code": "ResourceNotFoundException",
                                           "Message": "The specified log group does not exist."}
    with pytest.raises(missing) as exc:
        cw.get_log_events(logGroupName=group, logStreamName="AllTraffic/i-7-1")
    assert exc.value.response["Error"]["Message"] == "The specified log stream does not exist."
    with pytest.raises(cw.exceptions.InvalidParameterException):
        cw.filter_log_events(logGroupName=group, filterPattern='{ $.level = "ERROR" }')


@pytest.mark.slow
def test_failed_model_fn_traceback_is_findable(plane: Plane, tmp_path: Path) -> None:
    sm, cw = plane.client("sagemaker"), plane.client("logs")
    deploy(sm, "broken", make_model_dir(tmp_path / "model", INFERENCE_BAD))
    with pytest.raises(WaiterError):
        sm.get_waiter("endpoint_in_service").wait(EndpointName="broken", WaiterConfig=WAIT)
    assert sm.describe_endpoint(EndpointName="broken")["EndpointStatus"] == "Failed"
    group = "/aws/sagemaker/Endpoints/broken"
    found = cw.filter_log_events(logGroupName=group, filterPattern='"boom: the weights are corrupt"')["events"]
    assert found and any(e["message"].startswith("RuntimeError: boom") for e in found)
    tracebacks = cw.filter_log_events(logGroupName=group, filterPattern="Traceback")["events"]
    assert tracebacks
    # the lines of a traceback carry the time of the log line they follow, and stay readable after the
    # endpoint is deleted (logs outlive instances)
    sm.delete_endpoint(EndpointName="broken")
    again = cw.filter_log_events(logGroupName=group, filterPattern='"boom: the weights are corrupt"')["events"]
    assert [e["eventId"] for e in again] == [e["eventId"] for e in found]
