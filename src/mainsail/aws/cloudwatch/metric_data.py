"""``GetMetricData``: metric queries (``MetricStat``) and metric math (``Expression``) over one time range,
returned per query with CloudWatch's labels, order (``ScanBy``) and paging (``MaxDatapoints``,
``NextToken``). :func:`query_results` is also what alarms over metric math evaluate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mainsail.aws.cloudwatch import mathexpr
from mainsail.aws.cloudwatch.datapoints import TimeScale
from mainsail.aws.cloudwatch.errors import (
    InvalidParameterCombination,
    InvalidParameterValue,
    bad_next_token,
)
from mainsail.aws.cloudwatch.statistics import check_period, check_range, check_statistic, series
from mainsail.aws.cloudwatch.store import MetricStore
from mainsail.aws.protocol import offset_token, token_offset

DEFAULT_MAX_DATAPOINTS = 100_800


@dataclass
class QueryResult:
    """One time series a query returns: its id, label and (timestamp, value) points, oldest first."""

    id: str
    label: str
    points: list[tuple[float, float]]


def _check(queries: Sequence[Mapping[str, Any]]) -> None:
    seen: set[str] = set()
    for i, query in enumerate(queries, 1):
        qid = str(query["Id"])
        if qid in seen:
            raise InvalidParameterValue(f"The value {qid} for parameter MetricDataQueries.member.{i}.Id is duplicated.")
        seen.add(qid)
        if ("MetricStat" in query) == ("Expression" in query):
            raise InvalidParameterCombination(
                f"Exactly one of MetricStat and Expression must be specified in MetricDataQueries.member.{i}.")
        stat = query.get("MetricStat")
        if stat is not None:
            check_period(int(stat["Period"]), f"MetricDataQueries.member.{i}.MetricStat.Period")
            check_statistic(str(stat["Stat"]), f"MetricDataQueries.member.{i}.MetricStat.Stat")


def query_results(store: MetricStore, scale: TimeScale, queries: Sequence[Mapping[str, Any]], start: float,
                  end: float) -> list[QueryResult]:
    """The series of every query with ``ReturnData`` (default true), in the request's order."""
    _check(queries)
    by_id = {str(q["Id"]): q for q in queries}
    values: dict[str, mathexpr.Value] = {}
    labels: dict[str, str] = {}
    evaluating: set[str] = set()

    def lookup(qid: str) -> mathexpr.Value:
        if qid in values:
            return values[qid]
        query = by_id.get(qid)
        if query is None:
            raise mathexpr.ExpressionError(f"Error: unknown metric or expression id {qid}.")
        if qid in evaluating:
            raise mathexpr.ExpressionError(f"Error: circular reference through {qid}.")
        evaluating.add(qid)
        stat = query.get("MetricStat")
        if stat is not None:
            value: mathexpr.Value = dict(series(store, scale, stat["Metric"], str(stat["Stat"]), int(stat["Period"]),
                                                start, end, stat.get("Unit")))
            labels[qid] = str(query.get("Label") or stat["Metric"].get("MetricName", qid))
        else:
            try:
                value = mathexpr.evaluate(mathexpr.parse(str(query["Expression"])), lookup, metrics)
            except mathexpr.ExpressionError as exc:
                raise InvalidParameterValue(f"Error in expression {qid}: {exc}") from None
            labels[qid] = str(query.get("Label") or qid)
        evaluating.discard(qid)
        values[qid] = value
        return value

    def metrics(text: str) -> mathexpr.Array:
        items = []
        for q in queries:
            qid = str(q["Id"])
            if "MetricStat" in q and (text in qid or text in str(q.get("Label") or "")):
                one = lookup(qid)
                if isinstance(one, dict):
                    items.append((qid, labels[qid], one))
        return mathexpr.Array(items)

    for qid in by_id:
        lookup(qid)
    stamps = sorted({ts for v in values.values() if isinstance(v, dict) for ts in v})
    out: list[QueryResult] = []
    for qid, query in by_id.items():
        if query.get("ReturnData") is False:
            continue
        value = values[qid]
        if isinstance(value, mathexpr.Array):
            out.extend(QueryResult(qid, label or f"{labels[qid]} {sub}", _points(s)) for sub, label, s in value.items)
        elif isinstance(value, dict):
            out.append(QueryResult(qid, labels[qid], _points(value)))
        else:
            out.append(QueryResult(qid, labels[qid], _points({ts: value for ts in stamps})))
    return out


def _points(values: Mapping[float, float]) -> list[tuple[float, float]]:
    # ``v == v`` is ``not math.isnan(v)`` without a call per point (a day of minutes is 1,440 of them)
    return [(ts, v) for ts, v in sorted(values.items()) if v == v]


def get_metric_data(store: MetricStore, scale: TimeScale, body: Mapping[str, Any]) -> dict[str, Any]:
    """``GetMetricData``: every query's series, newest first unless ``ScanBy`` says otherwise, paged by
    ``MaxDatapoints`` across the results."""
    start, end = float(body["StartTime"]), float(body["EndTime"])
    check_range(start, end)
    results = query_results(store, scale, body["MetricDataQueries"], start, end)
    if body.get("ScanBy", "TimestampDescending") == "TimestampDescending":
        for result in results:
            result.points.reverse()
    limit = int(body.get("MaxDatapoints") or DEFAULT_MAX_DATAPOINTS)
    offset = _offset(body.get("NextToken"))
    out: list[dict[str, Any]] = []
    skip, room, more = offset, limit, False
    for result in results:
        points = result.points[skip:] if skip < len(result.points) else []
        skip = max(0, skip - len(result.points))
        page, rest = points[:room], points[room:]
        room -= len(page)
        more = more or bool(rest)
        out.append({"Id": result.id, "Label": result.label, "Timestamps": [ts for ts, _ in page],
                    "Values": [v for _, v in page], "StatusCode": "PartialData" if rest else "Complete",
                    "Messages": []})
    reply: dict[str, Any] = {"MetricDataResults": out, "Messages": []}
    if more:
        reply["NextToken"] = offset_token(offset + limit)
    return reply


def _offset(token: Any) -> int:
    return token_offset(token, bad_next_token)
