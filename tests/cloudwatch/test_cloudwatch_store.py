"""The metric store's packed histograms: the round trip, percentiles read from the packed buckets equal to
:meth:`Distribution.quantile`, rows of the older JSON form still read (and repacked when merged into), and
the percentile series equal to merging datapoints, over one-minute and five-minute periods."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

from mainsail.aws.cloudwatch import store as store_module
from mainsail.aws.cloudwatch.datapoints import Datapoint, Distribution, TimeScale, dimensions_of
from mainsail.aws.cloudwatch.statistics import aggregate, percentile_series, series, value_of
from mainsail.aws.cloudwatch.store import MetricStore, pack, quantile_of, unpack

DIMS = dimensions_of({"EndpointName": "e", "VariantName": "v"})
#: an hour two hours ago: the store prunes what is older than its retention (15 days)
T0 = float(int(time.time()) // 3600 * 3600 - 7200)
QS = (0.0, 0.001, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0)


def random_distribution(rng: random.Random, negatives: bool, whole: bool) -> Distribution:
    dist = Distribution()
    for _ in range(rng.randint(1, 300)):
        value = rng.lognormvariate(rng.uniform(-3, 12), 1.2)
        if negatives and rng.random() < 0.2:
            value = -value
        elif rng.random() < 0.05:
            value = 0.0
        dist.add(value, rng.choice((1.0, 2.0, 7.0) if whole else (1.0, 0.25, 1 / 3)))
    return dist


@pytest.mark.parametrize("negatives", [False, True])
@pytest.mark.parametrize("whole", [True, False])
def test_packed_histograms_round_trip_and_give_the_same_percentiles(negatives: bool, whole: bool) -> None:
    rng = random.Random(3)
    for _ in range(200):
        dist = random_distribution(rng, negatives, whole)
        packed = pack(dist)
        back = unpack(packed)
        assert (set(back.positive), set(back.negative), back.zeros) == (
            set(dist.positive), set(dist.negative), dist.zeros)
        for mine, theirs in ((back.positive, dist.positive), (back.negative, dist.negative)):
            if whole:  # whole counts come back exactly
                assert mine == theirs
            else:  # the differences of a running sum: within its rounding
                assert all(mine[k] == pytest.approx(n, abs=1e-9 * dist.count) for k, n in theirs.items())
        for q in QS:
            got = quantile_of(packed, q)
            assert got == back.quantile(q) if whole else got == pytest.approx(dist.quantile(q), rel=0.021), q
            if whole:
                assert got == dist.quantile(q), q
    assert quantile_of(pack(Distribution()), 0.5) is None
    assert quantile_of(pack(Distribution(zeros=3.0)), 0.99) == 0.0
    only_negative = Distribution()
    only_negative.add(-5.0)
    assert quantile_of(pack(only_negative), 1.0) == pytest.approx(-5.0, rel=0.01)


def test_percentiles_on_a_big_endian_host(monkeypatch: pytest.MonkeyPatch) -> None:
    dist = random_distribution(random.Random(5), True, True)
    packed = pack(dist)
    expected = [quantile_of(packed, q) for q in QS]
    monkeypatch.setattr(store_module, "_LITTLE_ENDIAN", False)  # the running count unpacked, not read in place
    assert [quantile_of(packed, q) for q in QS] == expected == [dist.quantile(q) for q in QS]


def test_json_rows_of_the_older_form_are_read_and_repacked(tmp_path: Path) -> None:
    store = MetricStore(tmp_path / "metrics.db")
    old = Datapoint("N", "Latency", DIMS, T0 + 60, "Milliseconds")
    for value in (10.0, 20.0, 30.0):
        old.add(value)
    assert old.distribution is not None
    with sqlite3.connect(tmp_path / "metrics.db") as conn:  # a row as the store wrote them before the packed form
        conn.execute("INSERT INTO datapoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     ("N", "Latency", json.dumps([list(p) for p in DIMS], separators=(",", ":")), "Milliseconds",
                      T0 + 60, 3.0, 60.0, 10.0, 30.0, json.dumps(old.distribution.to_json())))
    conn.close()
    [(ts, encoded)] = store.histograms("N", "Latency", DIMS, T0, T0 + 120)
    assert isinstance(encoded, str) and quantile_of(encoded, 0.5) == pytest.approx(20.0, rel=0.01)
    [point] = store.datapoints("N", "Latency", DIMS, T0, T0 + 120)
    assert point.distribution is not None and point.distribution.quantile(1.0) == pytest.approx(30.0, rel=0.01)

    more = Datapoint("N", "Latency", DIMS, T0 + 60, "Milliseconds")
    more.add(40.0)
    store.put([more])  # merged into the JSON row: written back packed
    [(_, encoded)] = store.histograms("N", "Latency", DIMS, T0, T0 + 120)
    assert isinstance(encoded, bytes) and quantile_of(encoded, 1.0) == pytest.approx(40.0, rel=0.01)
    [point] = store.datapoints("N", "Latency", DIMS, T0, T0 + 120, distributions=False)
    assert (point.sample_count, point.sum, point.distribution) == (4.0, 100.0, None)
    store.close()


@pytest.mark.parametrize("period", [60, 300])
@pytest.mark.parametrize("statistic", ["p50", "p99", "p99.9", "Average", "Sum", "SampleCount", "Minimum", "Maximum"])
def test_series_equal_merging_the_datapoints(tmp_path: Path, period: int, statistic: str) -> None:
    rng = random.Random(period)
    store = MetricStore(tmp_path / "metrics.db")
    for minute in range(1, 31):
        for unit in ("Milliseconds", "Seconds"):  # two units in one minute: one datapoint per period
            if rng.random() < 0.3:
                continue
            point = Datapoint("N", "Latency", DIMS, T0 + minute * 60.0, unit)
            if minute == 7 and unit == "Seconds":
                point.add_statistics(5, 50.0, 1.0, 20.0)  # no percentiles for its period any more
            else:
                for _ in range(rng.randint(1, 40)):
                    point.add(rng.lognormvariate(3, 1), rng.choice((1.0, 0.5)))
            store.put([point])
    metric = {"Namespace": "N", "MetricName": "Latency",
              "Dimensions": [{"Name": "EndpointName", "Value": "e"}, {"Name": "VariantName", "Value": "v"}]}
    got = series(store, TimeScale(), metric, statistic, period, T0 + 30, T0 + 31 * 60.0)

    expected = []  # what series computed before the packed form: every minute decoded and merged
    points = store.datapoints("N", "Latency", DIMS, T0, T0 + 31 * 60.0)
    for (ts, _), merged in sorted(aggregate(points, T0, float(period), by_unit=False).items()):
        value = value_of(merged, statistic)
        if value is not None:
            expected.append((ts, value))
    assert got == expected and len(got) >= 30 * 60 // period // 2
    if statistic.startswith("p") and period == 300:
        assert T0 + 300 not in [ts for ts, _ in got]  # the period holding minute 7's statistic set
    store.close()


def test_percentile_series_of_nothing() -> None:
    assert percentile_series([], 0.5, 0.0, 60.0) == []
    assert percentile_series([(60.0, None)], 0.5, 0.0, 60.0) == []
