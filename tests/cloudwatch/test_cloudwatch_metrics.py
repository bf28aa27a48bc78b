"""PutMetricData, GetMetricStatistics, GetMetricData and ListMetrics through real botocore clients of each
of CloudWatch's three protocols against ``mainsail up``'s app: the same calls answer the same."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

# a minute of metric time lasts one real second in these tests (conftest.TIME_SCALE)
MINUTE = 1.0


def _namespace() -> str:
    return f"Test/{uuid.uuid4().hex[:8]}"


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _base() -> float:
    """The start of a scaled minute a little in the past, so that every period the tests write is complete."""
    return float(int(time.time()) - 100)


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    return exc.value.response["Error"]["Code"], exc.value.response["Error"]["Message"]


def test_put_then_get_statistics(cw: Any) -> None:
    ns, base = _namespace(), _base()
    dims = [{"Name": "Host", "Value": "a"}]
    # minute 0: 1..100; minute 1: 1000 five times (Values + Counts) and a statistic set in another unit
    cw.put_metric_data(Namespace=ns, MetricData=[
        {"MetricName": "Latency", "Dimensions": dims, "Timestamp": _at(base + 0.5), "Values": list(range(1, 51)),
         "Unit": "Milliseconds"},
        {"MetricName": "Latency", "Dimensions": dims, "Timestamp": _at(base + 0.2), "Values": list(range(51, 101)),
         "Unit": "Milliseconds"},
        {"MetricName": "Latency", "Dimensions": dims, "Timestamp": _at(base + 1.1), "Values": [1000.0],
         "Counts": [5.0], "Unit": "Milliseconds"},
        {"MetricName": "Latency", "Dimensions": dims, "Timestamp": _at(base + 1.1), "Unit": "Seconds",
         "StatisticValues": {"SampleCount": 2, "Sum": 3.0, "Minimum": 1.0, "Maximum": 2.0}},
    ])
    got = cw.get_metric_statistics(Namespace=ns, MetricName="Latency", Dimensions=dims, StartTime=_at(base),
                                   EndTime=_at(base + 2), Period=60,
                                   Statistics=["SampleCount", "Sum", "Minimum", "Maximum", "Average"])
    assert got["Label"] == "Latency"
    points = sorted(((p["Timestamp"].timestamp(), p["Unit"]), p) for p in got["Datapoints"])
    assert [k for k, _ in points] == [(base, "Milliseconds"), (base + 1, "Milliseconds"), (base + 1, "Seconds")]
    first = points[0][1]
    assert (first["SampleCount"], first["Sum"], first["Minimum"], first["Maximum"], first["Average"]) == \
        (100.0, 5050.0, 1.0, 100.0, 50.5)
    assert (points[1][1]["SampleCount"], points[1][1]["Sum"]) == (5.0, 5000.0)
    assert (points[2][1]["SampleCount"], points[2][1]["Sum"], points[2][1]["Maximum"]) == (2.0, 3.0, 2.0)

    # a two-minute period merges the minutes of one unit; Unit filters
    got = cw.get_metric_statistics(Namespace=ns, MetricName="Latency", Dimensions=dims, StartTime=_at(base),
                                   EndTime=_at(base + 2), Period=120, Statistics=["SampleCount", "Maximum"],
                                   Unit="Milliseconds")
    assert [(p["SampleCount"], p["Maximum"], p["Unit"]) for p in got["Datapoints"]] == [(105.0, 1000.0, "Milliseconds")]

    # percentiles within 1 %
    got = cw.get_metric_statistics(Namespace=ns, MetricName="Latency", Dimensions=dims, StartTime=_at(base),
                                   EndTime=_at(base + 1), Period=60, ExtendedStatistics=["p50", "p90", "p99.5"])
    ext = got["Datapoints"][0]["ExtendedStatistics"]
    for name, exact in (("p50", 50.0), ("p90", 90.0), ("p99.5", 100.0)):
        assert abs(ext[name] - exact) <= 0.01 * exact + 1, (name, ext[name])


def test_unknown_metric_is_empty(cw: Any) -> None:
    base = _base()
    got = cw.get_metric_statistics(Namespace="Nobody/Here", MetricName="Nothing", StartTime=_at(base),
                                   EndTime=_at(base + 60), Period=60, Statistics=["Sum"])
    assert got["Datapoints"] == []


@pytest.mark.parametrize(("call", "code", "fragment"), [
    ({"Period": 61}, "InvalidParameterValue", "multiple of 60"),
    ({"Period": 60, "EndTime": -10}, "InvalidParameterValue", "StartTime must be less than"),
    ({"Period": 1, "EndTime": 2000}, "InvalidParameterCombination", "exceeds the limit of 1440"),
    ({"Period": 60, "ExtendedStatistics": ["p50"]}, "InvalidParameterCombination", "mutually exclusive"),
    ({"Period": 60, "Statistics": None}, "InvalidParameterCombination", "Statistics or ExtendedStatistics"),
    ({"Period": 60, "Statistics": ["Median"]}, "ValidationError", "enum value set"),
    ({"Period": 60, "EndTime": 0.0, "StartTime": 0.0}, "ValidationError", "must not equal"),
])
def test_bad_statistics_calls(cw: Any, call: dict[str, Any], code: str, fragment: str) -> None:
    base = _base()
    args: dict[str, Any] = {"Namespace": "N", "MetricName": "M", "StartTime": _at(base), "EndTime": _at(base + 10),
                            "Statistics": ["Sum"], **call}
    for key in ("StartTime", "EndTime"):  # given as seconds after the base
        if key in call:
            args[key] = _at(base + call[key])
    args = {k: v for k, v in args.items() if v is not None}
    with pytest.raises(ClientError) as exc:
        cw.get_metric_statistics(**args)
    got_code, message = _error(exc)
    assert got_code == code and fragment in message, message


def test_bad_put_metric_data(cw: Any) -> None:
    with pytest.raises(ClientError) as exc:
        cw.put_metric_data(Namespace="AWS/EC2", MetricData=[{"MetricName": "M", "Value": 1.0}])
    assert _error(exc) == ("InvalidParameterValue", "The value AWS/EC2 for parameter Namespace is invalid.")
    with pytest.raises(ClientError) as exc:
        cw.put_metric_data(Namespace="N", MetricData=[{"MetricName": "M", "Value": 1.0,
                                                       "StatisticValues": {"SampleCount": 1, "Sum": 1, "Minimum": 1,
                                                                           "Maximum": 1}}])
    assert _error(exc)[0] == "InvalidParameterCombination"
    with pytest.raises(ClientError) as exc:
        cw.put_metric_data(Namespace="N", MetricData=[{"MetricName": "M"}])
    assert _error(exc) == ("InvalidParameterCombination", "At least one of the parameters MetricData.member.1.Value "
                           "and MetricData.member.1.StatisticValues must be specified.")
    with pytest.raises(ClientError) as exc:
        cw.put_metric_data(Namespace="N", MetricData=[{"MetricName": "M", "Value": 1.0, "StorageResolution": 5}])
    assert _error(exc)[0] == "InvalidParameterValue" and "StorageResolution" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        cw.put_metric_data(Namespace="N", MetricData=[{"MetricName": "M", "Values": [1.0, 2.0], "Counts": [1.0]}])
    assert _error(exc)[0] == "InvalidParameterValue" and "same size" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        cw.put_metric_data(Namespace="N", MetricData=[{"MetricName": "M", "Value": 1.0,
                                                       "Timestamp": _at(time.time() + 3 * 3600)}])
    assert _error(exc)[0] == "InvalidParameterValue"


def test_get_metric_data_with_math(cw: Any) -> None:
    ns, base = _namespace(), _base()
    data = []
    for minute in range(3):
        data.append({"MetricName": "Errors", "Timestamp": _at(base + minute * MINUTE), "Value": float(minute + 1)})
        data.append({"MetricName": "Requests", "Timestamp": _at(base + minute * MINUTE), "Value": 10.0})
    cw.put_metric_data(Namespace=ns, MetricData=data)

    def stat(qid: str, name: str, **extra: Any) -> dict[str, Any]:
        return {"Id": qid, "MetricStat": {"Metric": {"Namespace": ns, "MetricName": name}, "Period": 60,
                                          "Stat": "Sum"}, **extra}
    queries = [stat("e", "Errors", ReturnData=False), stat("r", "Requests", Label="reqs"),
               {"Id": "rate", "Expression": "100 * e / r", "Label": "ErrorRate"},
               {"Id": "total", "Expression": "SUM([e, r])"}, {"Id": "peak", "Expression": "MAX(e) + (2 - 1)"},
               {"Id": "all", "Expression": "AVG(METRICS())"}]
    got = cw.get_metric_data(MetricDataQueries=queries, StartTime=_at(base), EndTime=_at(base + 3),
                             ScanBy="TimestampAscending")
    results = {r["Id"]: r for r in got["MetricDataResults"]}
    assert set(results) == {"r", "rate", "total", "peak", "all"}
    assert results["r"]["Label"] == "reqs" and results["r"]["Values"] == [10.0, 10.0, 10.0]
    assert [t.timestamp() for t in results["rate"]["Timestamps"]] == [base, base + 1, base + 2]
    assert results["rate"]["Label"] == "ErrorRate" and results["rate"]["Values"] == [10.0, 20.0, 30.0]
    assert results["total"]["Values"] == [11.0, 12.0, 13.0]
    assert results["peak"]["Values"] == [4.0, 4.0, 4.0]
    assert results["all"]["Values"] == [5.5, 6.0, 6.5]
    assert all(r["StatusCode"] == "Complete" for r in results.values())

    # newest first by default, and paging by MaxDatapoints
    pages, token = [], None
    while True:
        extra = {"NextToken": token} if token else {}
        page = cw.get_metric_data(MetricDataQueries=[stat("e", "Errors")], StartTime=_at(base),
                                  EndTime=_at(base + 3), MaxDatapoints=2, **extra)
        pages.append(page["MetricDataResults"][0]["Values"])
        token = page.get("NextToken")
        if not token:
            break
    assert pages == [[3.0, 2.0], [1.0]]

    with pytest.raises(ClientError) as exc:
        cw.get_metric_data(MetricDataQueries=[stat("e", "Errors"), {"Id": "x", "Expression": "e +* 2"}],
                           StartTime=_at(base), EndTime=_at(base + 3))
    assert _error(exc)[0] == "InvalidParameterValue" and "Syntax Error" in _error(exc)[1]


def test_list_metrics_filters_and_paging(cw: Any) -> None:
    ns, base = _namespace(), _base()
    data = [{"MetricName": f"M{i % 3}", "Dimensions": [{"Name": "Shard", "Value": str(i)},
                                                        {"Name": "Kind", "Value": "odd" if i % 2 else "even"}],
             "Timestamp": _at(base), "Value": 1.0} for i in range(12)]
    cw.put_metric_data(Namespace=ns, MetricData=data)
    cw.put_metric_data(Namespace=ns, MetricData=[{"MetricName": "Plain", "Value": 1.0}])
    assert len(cw.list_metrics(Namespace=ns)["Metrics"]) == 13
    only = cw.list_metrics(Namespace=ns, MetricName="M1")["Metrics"]
    assert sorted(int(dict((d["Name"], d["Value"]) for d in m["Dimensions"])["Shard"]) for m in only) == [1, 4, 7, 10]
    odd = cw.list_metrics(Namespace=ns, Dimensions=[{"Name": "Kind", "Value": "odd"}])["Metrics"]
    assert len(odd) == 6
    assert len(cw.list_metrics(Namespace=ns, Dimensions=[{"Name": "Kind"}])["Metrics"]) == 12
    assert len(cw.list_metrics(Namespace=ns, RecentlyActive="PT3H")["Metrics"]) == 13
    paginator = cw.get_paginator("list_metrics")
    assert sum(len(p["Metrics"]) for p in paginator.paginate(Namespace=ns)) == 13
    for token in ("not a token", "bm90IGEgbnVtYmVy"):  # not base64; base64 of something not an offset
        with pytest.raises(ClientError) as exc:
            cw.list_metrics(Namespace=ns, NextToken=token)
        assert exc.value.response["Error"]["Code"] == "InvalidNextToken"
