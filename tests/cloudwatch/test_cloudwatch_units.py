"""Unit tests of CloudWatch's pure parts: the alarm rule, metric math, percentiles, the merge of values
with statistic sets, and the query protocol's reading and writing by the model."""

from __future__ import annotations

import math
import random

import pytest

from mainsail.aws.cloudwatch import mathexpr, wire
from mainsail.aws.cloudwatch.datapoints import Datapoint, Distribution
from mainsail.aws.cloudwatch.evaluation import alarm_state
from mainsail.aws.cloudwatch.service import CloudWatch
from mainsail.aws.cloudwatch.statistics import percentile, value_of
from mainsail.aws.shapes import service_model

GT = "GreaterThanThreshold"


@pytest.mark.parametrize(("values", "m", "treat", "current", "state"), [
    ([60, 60, 60], 3, "missing", "OK", "ALARM"),
    ([60, 10, 60], 3, "missing", "OK", "OK"),
    ([60, 10, 60], 2, "missing", "OK", "ALARM"),          # 2 out of 3
    ([None, None, None], 2, "missing", "OK", "INSUFFICIENT_DATA"),
    ([None, None, None], 2, "ignore", "ALARM", "ALARM"),   # the state is kept
    ([None, None, None], 2, "breaching", "OK", "ALARM"),
    ([None, None, None], 2, "notBreaching", "ALARM", "OK"),
    ([None, 60, None], 2, "breaching", "OK", "ALARM"),
    ([None, 60, None], 2, "notBreaching", "OK", "OK"),
    ([None, 60, 60], 2, "missing", "OK", "ALARM"),
    ([None, 60, None], 2, "missing", "ALARM", "OK"),       # present data that cannot make 2: OK
    ([None, 60, None], 2, "ignore", "ALARM", "OK"),
    ([50, 50], 1, "missing", "OK", "OK"),                   # GreaterThan: equal does not breach
])
def test_alarm_state(values: list[float | None], m: int, treat: str, current: str, state: str) -> None:
    assert alarm_state(values, 50.0, GT, m, treat, current) == state


def test_comparisons() -> None:
    assert alarm_state([50.0], 50.0, "GreaterThanOrEqualToThreshold", 1, "missing", "OK") == "ALARM"
    assert alarm_state([49.0], 50.0, "LessThanThreshold", 1, "missing", "OK") == "ALARM"
    assert alarm_state([50.0], 50.0, "LessThanOrEqualToThreshold", 1, "missing", "OK") == "ALARM"
    assert alarm_state([50.0], 50.0, "LessThanThreshold", 1, "missing", "ALARM") == "OK"


def _evaluate(text: str) -> mathexpr.Value:
    series = {"a": {1.0: 2.0, 2.0: 4.0}, "b": {1.0: 1.0, 2.0: 0.0, 3.0: 5.0}}
    return mathexpr.evaluate(mathexpr.parse(text), lambda i: series[i],
                             lambda f: mathexpr.Array([(k, k, v) for k, v in series.items() if f in k]))


def test_metric_math() -> None:
    assert _evaluate("1 + 2 * 3") == 7.0
    assert _evaluate("(1 + 2) * -3") == -9.0
    assert _evaluate("a * 10") == {1.0: 20.0, 2.0: 40.0}
    assert _evaluate("a + b") == {1.0: 3.0, 2.0: 4.0}              # only the timestamps both have
    assert math.isnan(_evaluate("a / b")[2.0])                      # type: ignore[index]
    assert _evaluate("SUM([a, b])") == {1.0: 3.0, 2.0: 4.0, 3.0: 5.0}
    assert _evaluate("MAX(METRICS())") == {1.0: 2.0, 2.0: 4.0, 3.0: 5.0}
    assert _evaluate('MIN(METRICS("b"))') == {1.0: 1.0, 2.0: 0.0, 3.0: 5.0}
    assert _evaluate("AVG(a)") == 3.0                               # of one series: a scalar
    assert _evaluate("a - AVG(a)") == {1.0: -1.0, 2.0: 1.0}
    assert mathexpr.references(mathexpr.parse("SUM([a, b]) / METRICS()")) == {"a", "b", ""}
    for bad in ("a +", "(a", "a b", "2 $ 3", "FOO(a)", "SUM(a, b)", '"x"'):
        with pytest.raises(mathexpr.ExpressionError):
            _evaluate(bad)


def test_percentiles_within_one_percent() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1.5) for _ in range(20_000)] + [0.0] * 100 + [-rng.random() for _ in range(50)]
    dist = Distribution()
    for v in values:
        dist.add(v)
    ordered = sorted(values)
    for q in (0.01, 0.1, 0.5, 0.9, 0.99, 0.999):
        exact = ordered[max(math.ceil(q * len(ordered)) - 1, 0)]  # the nearest rank
        got = dist.quantile(q)
        assert got is not None and abs(got - exact) <= 0.01 * abs(exact) + 1e-12, (q, got, exact)
    assert percentile("p99.9") == 99.9 and percentile("p100") == 100.0
    assert percentile("p101") is None and percentile("tm99") is None


def test_values_after_a_statistic_set_lose_percentiles() -> None:
    point = Datapoint("N", "M", (), 0.0)
    point.add_statistics(10, 100.0, 1.0, 20.0)
    point.add(1000.0)
    assert (point.sample_count, point.sum, point.maximum) == (11.0, 1100.0, 1000.0)
    assert point.distribution is None and value_of(point, "p50") is None
    fresh = Datapoint("N", "M", (), 0.0)
    fresh.add(5.0)
    fresh.add(7.0, 3)
    assert value_of(fresh, "SampleCount") == 4.0 and value_of(fresh, "Average") == 6.5


def test_query_protocol_reads_and_writes_by_the_model() -> None:
    model = service_model("cloudwatch")
    shape = model.operation_model("PutMetricData").input_shape
    params = {"Action": "PutMetricData", "Version": "2010-08-01", "Namespace": "N",
              "MetricData.member.1.MetricName": "M", "MetricData.member.1.Value": "1.5",
              "MetricData.member.1.Dimensions.member.1.Name": "D", "MetricData.member.1.Dimensions.member.1.Value": "v",
              "MetricData.member.1.Timestamp": "2024-01-02T03:04:05Z", "MetricData.member.2.MetricName": "E",
              "MetricData.member.2.Values.member.1": "2", "MetricData.member.2.Values.member.2": "3",
              "MetricData.member.2.Counts": ""}
    assert wire.query_input(shape, params) == {"Namespace": "N", "MetricData": [
        {"MetricName": "M", "Value": 1.5, "Dimensions": [{"Name": "D", "Value": "v"}], "Timestamp": 1704164645.0},
        {"MetricName": "E", "Values": [2.0, 3.0], "Counts": []}]}
    out = model.operation_model("GetMetricStatistics").output_shape
    xml = wire.xml(out, {"Label": "L&", "Datapoints": [{"Timestamp": 0.0, "Sum": 2.0, "Unit": "Count"}]})
    assert xml == ("<Label>L&amp;</Label><Datapoints><member><Timestamp>1970-01-01T00:00:00.000Z</Timestamp>"
                   "<Sum>2.0</Sum><Unit>Count</Unit></member></Datapoints>")
    assert CloudWatch.model() is model
