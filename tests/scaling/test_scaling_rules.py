"""The rules Application Auto Scaling computes by, as pure functions: percentage rounding, step choice,
target tracking's proportional capacity, step validation, and the at() / rate() / cron() schedules."""

from __future__ import annotations

import datetime as dt

import pytest

from mainsail.aws.cloudwatch.datapoints import TimeScale
from mainsail.aws.errors import ValidationException
from mainsail.scaling import adjust, schedules

UTC = schedules.zone(None)


@pytest.mark.parametrize(("change", "rounded"), [(2.7, 2), (0.3, 1), (0.0, 0), (-0.4, -1), (-2.7, -2)])
def test_percent_changes_round_as_aws_rounds(change: float, rounded: int) -> None:
    assert adjust.round_change(change) == rounded


def test_adjustments() -> None:
    assert adjust.adjusted(4, "ChangeInCapacity", -1) == 3
    assert adjust.adjusted(4, "ExactCapacity", 7) == 7
    assert adjust.adjusted(10, "PercentChangeInCapacity", 25) == 12
    assert adjust.adjusted(2, "PercentChangeInCapacity", 10) == 3  # 0.2 rounds to 1
    assert adjust.adjusted(2, "PercentChangeInCapacity", 10, min_magnitude=2) == 4
    assert adjust.clamp(9, 1, 4) == 4 and adjust.clamp(0, 1, 4) == 1


def test_the_step_is_chosen_by_the_distance_from_the_threshold() -> None:
    steps = [{"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 5.0, "ScalingAdjustment": 1},
             {"MetricIntervalLowerBound": 5.0, "ScalingAdjustment": 2},
             {"MetricIntervalUpperBound": 0.0, "ScalingAdjustment": -1}]
    assert adjust.choose_step(steps, 0.0)["ScalingAdjustment"] == 1  # type: ignore[index]
    assert adjust.choose_step(steps, 5.0)["ScalingAdjustment"] == 2  # type: ignore[index]
    assert adjust.choose_step(steps, -0.5)["ScalingAdjustment"] == -1  # type: ignore[index]
    assert adjust.choose_step(steps[:1], 7.0) is None
    assert adjust.aggregate([1.0, 5.0], "Maximum") == 5.0 and adjust.aggregate([1.0, 5.0], None) == 3.0


def test_target_tracking_capacity_is_proportional() -> None:
    assert adjust.tracking_capacity(1, 25.0, 10.0) == 3
    assert adjust.tracking_capacity(3, 10.0, 10.0) == 3
    assert adjust.tracking_capacity(4, 2.0, 10.0) == 1


@pytest.mark.parametrize("steps", [
    [],
    [{"ScalingAdjustment": 1}, {"MetricIntervalLowerBound": 1.0, "ScalingAdjustment": 1}],
    [{"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 2.0, "ScalingAdjustment": 1},
     {"MetricIntervalLowerBound": 3.0, "ScalingAdjustment": 2}],  # a gap
    [{"MetricIntervalLowerBound": 2.0, "MetricIntervalUpperBound": 1.0, "ScalingAdjustment": 1}],
])
def test_bad_steps_are_refused(steps: list[dict[str, float]]) -> None:
    with pytest.raises(ValidationException):
        adjust.check_steps(steps)


def test_at_runs_once() -> None:
    schedule = schedules.parse("at(2030-01-02T03:04:05)")
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()
    assert schedules.next_run(schedule, when - 10, origin=0, tz=UTC, scale=TimeScale()) == when
    assert schedules.next_run(schedule, when, origin=0, tz=UTC, scale=TimeScale()) is None


def test_rate_runs_on_the_metrics_clock() -> None:
    schedule = schedules.parse("rate(5 minutes)")
    assert schedules.next_run(schedule, 1000.0, origin=1000.0, tz=UTC, scale=TimeScale()) == 1300.0
    assert schedules.next_run(schedule, 1007.0, origin=1000.0, tz=UTC, scale=TimeScale(60)) == 1010.0


def test_cron_in_a_time_zone() -> None:
    schedule = schedules.parse("cron(30 9 ? * MON-FRI *)")
    saturday = dt.datetime(2030, 1, 5, 12, 0, tzinfo=dt.UTC).timestamp()
    paris = schedules.zone("Europe/Paris")
    expected = dt.datetime(2030, 1, 7, 9, 30, tzinfo=paris).timestamp()  # Monday, 09:30 in Paris
    assert schedules.next_run(schedule, saturday, origin=0, tz=paris, scale=TimeScale()) == expected
    monthly = schedules.parse("cron(0 0 1 */3 ? 2030)")
    first = schedules.next_run(monthly, saturday, origin=0, tz=UTC, scale=TimeScale())
    assert first == dt.datetime(2030, 4, 1, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize("expression", ["every(5 minutes)", "rate(0 minutes)", "rate(5 weeks)", "at(tomorrow)",
                                        "cron(0 9 * * MON *)", "cron(0 9 L * ? *)", "cron(0 9 * *)"])
def test_bad_schedules_are_refused(expression: str) -> None:
    with pytest.raises(ValidationException):
        schedules.parse(expression)


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValidationException):
        schedules.zone("Mars/Olympus_Mons")
