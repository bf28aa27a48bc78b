"""Statistics over the store's one-minute rows: periods aggregated as CloudWatch aligns them, the
statistic names (``Average``, ``p99``, ``p99.9``, ...) read from a :class:`Datapoint`, and the
``GetMetricStatistics`` operation with CloudWatch's checks of its arguments."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mainsail.aws.cloudwatch.datapoints import Datapoint, Dimensions, TimeScale, dimensions_of
from mainsail.aws.cloudwatch.errors import InvalidParameterCombination, InvalidParameterValue, ValidationError
from mainsail.aws.cloudwatch.store import Encoded, MetricStore, quantile_of, unpack

STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
MAX_DATAPOINTS = 1440
HIGH_RESOLUTION_PERIODS = (1, 5, 10, 30)
_PERCENTILE_RE = re.compile(r"p(\d{1,2}(?:\.\d{1,10})?|100(?:\.0{1,10})?)")


def percentile(statistic: str) -> float | None:
    """``p99.9`` as 99.9; None if ``statistic`` is not a percentile CloudWatch reads."""
    match = _PERCENTILE_RE.fullmatch(statistic)
    return float(match.group(1)) if match else None


def value_of(point: Datapoint, statistic: str) -> float | None:
    """``statistic`` of ``point``; None where it has none (an empty period, a percentile of a period put
    as statistic sets only)."""
    if statistic == "SampleCount":
        return point.sample_count
    if not point.sample_count:
        return None
    if statistic == "Average":
        return point.average
    if statistic == "Sum":
        return point.sum
    if statistic == "Minimum":
        return point.minimum
    if statistic == "Maximum":
        return point.maximum
    q = percentile(statistic)
    if q is None or point.distribution is None:
        return None
    return point.distribution.quantile(q / 100)


def check_statistic(statistic: str, parameter: str) -> None:
    if statistic not in STATISTICS and percentile(statistic) is None:
        raise InvalidParameterValue(f"The value {statistic} for parameter {parameter} is not supported.")


def check_period(period: int, parameter: str = "Period") -> None:
    if period < 1 or (period < 60 and period not in HIGH_RESOLUTION_PERIODS) or (period >= 60 and period % 60):
        raise InvalidParameterValue(f"The parameter {parameter} must be 1, 5, 10, 30, or a multiple of 60.")


def check_range(start: float, end: float) -> None:
    if start == end:
        raise ValidationError("The parameter StartTime must not equal parameter EndTime.")
    if start > end:
        raise InvalidParameterValue("The parameter StartTime must be less than the parameter EndTime.")


def aligned_start(start: float, period_s: float, scale: TimeScale) -> float:
    """Where the first period begins: ``start`` rounded down to the minute (to the period's own length for
    a sub-minute period), as CloudWatch rounds a StartTime less than 15 days old."""
    length = scale.real_seconds(min(period_s, 60))
    return math.floor(start / length) * length


def aggregate(points: Iterable[Datapoint], start: float, period_real: float,
              by_unit: bool = True) -> dict[tuple[float, str], Datapoint]:
    """The one-minute ``points`` merged into periods of ``period_real`` seconds from ``start``, keyed by
    (period start, unit); with ``by_unit`` False every unit goes into one datapoint per period (unit "").
    The points are consumed: a period's first point becomes its datapoint (re-stamped, the others merged
    into it), which spares a copy of each minute's histogram when periods are minutes."""
    out: dict[tuple[float, str], Datapoint] = {}
    for point in points:
        bucket = start + math.floor((point.timestamp - start) / period_real + 1e-9) * period_real
        key = (bucket, point.unit if by_unit else "")
        merged = out.get(key)
        if merged is None:
            point.timestamp, point.unit = key
            out[key] = point
        else:
            merged.merge(point)
    return out


def metric_dimensions(dimensions: Iterable[Mapping[str, Any]] | None) -> Dimensions:
    return dimensions_of((str(d["Name"]), str(d["Value"])) for d in dimensions or ())


def series(store: MetricStore, scale: TimeScale, metric: Mapping[str, Any], statistic: str, period_s: int,
           start: float, end: float, unit: str | None = None) -> list[tuple[float, float]]:
    """One statistic of ``metric`` (a ``Metric``: Namespace, MetricName, Dimensions) per period of
    ``period_s`` metric seconds over [start, end), oldest first; periods without data left out."""
    first = aligned_start(start, period_s, scale)
    key = (str(metric.get("Namespace", "")), str(metric.get("MetricName", "")),
           metric_dimensions(metric.get("Dimensions")))
    q = percentile(statistic)
    if q is not None:
        return percentile_series(store.histograms(*key, first, end, unit), q / 100, first,
                                 scale.real_seconds(period_s))
    return summary_series(store.summaries(*key, first, end, unit), statistic, first, scale.real_seconds(period_s))


def summary_series(summaries: Iterable[tuple[float, float, float, float, float]], statistic: str, start: float,
                   period_real: float) -> list[tuple[float, float]]:
    """``statistic`` (not a percentile) of each period of ``period_real`` seconds from ``start``, from the
    store's (timestamp, SampleCount, Sum, Minimum, Maximum) rows (:meth:`MetricStore.summaries`), merged as
    :meth:`Datapoint.merge` merges them."""
    def period_of(row: tuple[float, float, float, float, float]) -> float:
        return start + math.floor((row[0] - start) / period_real + 1e-9) * period_real

    column = {"SampleCount": 1, "Sum": 2, "Minimum": 3, "Maximum": 4}.get(statistic)
    out = []
    for bucket, rows in itertools.groupby(summaries, key=period_of):  # the rows come oldest first
        group = list(rows)
        if len(group) == 1:  # a one-minute period
            _, count, total, minimum, maximum = group[0]
        else:
            count, total = sum(r[1] for r in group), sum(r[2] for r in group)
            minimum, maximum = min(r[3] for r in group), max(r[4] for r in group)
        if statistic == "SampleCount":
            out.append((bucket, count))
        elif count and column is not None:
            out.append((bucket, (count, total, minimum, maximum)[column - 1]))
        elif count and statistic == "Average":
            out.append((bucket, total / count))
    return out


def percentile_series(histograms: Iterable[tuple[float, Encoded | None]], q: float, start: float,
                      period_real: float) -> list[tuple[float, float]]:
    """The ``q`` quantile (0..1) of each period of ``period_real`` seconds from ``start``, from the store's
    one-minute histograms (:meth:`MetricStore.histograms`); a period with a minute put as statistic sets has
    none (as :meth:`Datapoint.merge` decides). A period of one minute is read from its packed buckets as
    they are (:func:`quantile_of`): a day of minutes for ten endpoints is 14,400 of them."""
    def period_of(row: tuple[float, Encoded | None]) -> float:
        return start + math.floor((row[0] - start) / period_real + 1e-9) * period_real

    out = []
    for bucket, rows in itertools.groupby(histograms, key=period_of):  # the rows come oldest first
        minutes = [encoded for _, encoded in rows]
        kept = [encoded for encoded in minutes if encoded is not None]
        if len(kept) < len(minutes):
            continue
        if len(kept) == 1:  # a one-minute period (or one minute of a longer one)
            value = quantile_of(kept[0], q)
        else:
            merged = unpack(kept[0])
            for encoded in kept[1:]:
                merged.merge(unpack(encoded))
            value = merged.quantile(q)
        if value is not None:
            out.append((bucket, value))
    return out


def get_metric_statistics(store: MetricStore, scale: TimeScale, body: Mapping[str, Any]) -> dict[str, Any]:
    """``GetMetricStatistics``: the asked statistics of one metric (exact dimensions) per period."""
    statistics: list[str] = list(body.get("Statistics") or [])
    extended: list[str] = list(body.get("ExtendedStatistics") or [])
    if statistics and extended:
        raise InvalidParameterCombination(
            "The parameters Statistics and ExtendedStatistics are mutually exclusive.")
    if not statistics and not extended:
        raise InvalidParameterCombination("Must specify either Statistics or ExtendedStatistics.")
    for statistic in extended:
        if percentile(statistic) is None:
            raise InvalidParameterValue(f"The value {statistic} for parameter ExtendedStatistics is not supported.")
    period = int(body["Period"])
    check_period(period)
    start, end = float(body["StartTime"]), float(body["EndTime"])
    check_range(start, end)
    first = aligned_start(start, period, scale)
    period_real = scale.real_seconds(period)
    requested = math.ceil((end - first) / period_real - 1e-9)
    if requested > MAX_DATAPOINTS:
        raise InvalidParameterCombination(
            f"You have requested up to {requested} datapoints, which exceeds the limit of {MAX_DATAPOINTS}. "
            "You may reduce the datapoints requested by increasing Period, or decreasing the time range.")
    unit = body.get("Unit")
    points = store.datapoints(body["Namespace"], body["MetricName"], metric_dimensions(body.get("Dimensions")),
                              first, end, unit, distributions=bool(extended))
    datapoints = []
    for (ts, point_unit), point in sorted(aggregate(points, first, period_real).items()):
        item: dict[str, Any] = {"Timestamp": ts, "Unit": point_unit}
        for statistic in statistics:
            item[statistic] = value_of(point, statistic)
        values = {s: value_of(point, s) for s in extended}
        if any(v is not None for v in values.values()):
            item["ExtendedStatistics"] = {s: v for s, v in values.items() if v is not None}
        datapoints.append(item)
    return {"Label": body["MetricName"], "Datapoints": datapoints}
