"""How much a policy scales: pure functions over capacities, adjustments and metric values, as
Application Auto Scaling computes them (its rounding of percentages, its step bounds, target tracking's
proportional rule)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mainsail.aws.errors import ValidationException

ADJUSTMENT_TYPES = ("ChangeInCapacity", "PercentChangeInCapacity", "ExactCapacity")
#: how close two floats must be to count as equal (a metric exactly on its target does not scale)
_EPSILON = 1e-9


def clamp(capacity: int, minimum: int, maximum: int) -> int:
    """``capacity`` within ``[minimum, maximum]``."""
    return max(minimum, min(maximum, capacity))


def aggregate(values: Sequence[float], kind: str | None) -> float | None:
    """``values`` by ``MetricAggregationType`` (Average when not given); None when there are none."""
    if not values:
        return None
    if kind == "Minimum":
        return min(values)
    if kind == "Maximum":
        return max(values)
    return sum(values) / len(values)


def round_change(change: float) -> int:
    """A percentage's change in capacity as AWS rounds it: above 1 down, between 0 and 1 to 1, between
    -1 and 0 to -1, below -1 up (towards zero)."""
    if change > 1:
        return math.floor(change)
    if change > 0:
        return 1
    if change >= -1:
        return -1 if change < 0 else 0
    return math.ceil(change)


def adjusted(current: int, adjustment_type: str, adjustment: float, min_magnitude: int | None = None) -> int:
    """The capacity after applying ``adjustment`` of ``adjustment_type`` to ``current`` (not clamped)."""
    if adjustment_type == "ExactCapacity":
        return int(adjustment)
    if adjustment_type == "PercentChangeInCapacity":
        change = round_change(current * adjustment / 100.0)
        if min_magnitude and abs(change) < min_magnitude:
            change = int(math.copysign(min_magnitude, adjustment))
        return current + change
    return current + int(adjustment)


def choose_step(steps: Sequence[Mapping[str, Any]], distance: float) -> Mapping[str, Any] | None:
    """The step adjustment whose interval holds ``distance`` (the breaching value minus the alarm's
    threshold): ``[lower, upper)`` above the threshold, ``(lower, upper]`` below it; None if none does."""
    for step in steps:
        lower = step.get("MetricIntervalLowerBound")
        upper = step.get("MetricIntervalUpperBound")
        low = -math.inf if lower is None else float(lower)
        high = math.inf if upper is None else float(upper)
        if distance >= 0 and low <= distance < high:
            return step
        if distance < 0 and low < distance <= high:
            return step
    return None


def tracking_capacity(current: int, metric: float, target: float) -> int:
    """Target tracking's new capacity: enough instances that the metric per instance meets the target,
    ``ceil(current * metric / target)``."""
    return math.ceil(current * metric / target - _EPSILON)


def check_steps(steps: Any) -> None:
    """ValidationException unless ``steps`` are non-empty intervals that neither overlap nor leave a gap,
    with at most one unbounded end on each side."""
    if not steps:
        raise ValidationException("StepScalingPolicyConfiguration must have at least one StepAdjustment.")
    intervals = []
    for step in steps:
        lower, upper = step.get("MetricIntervalLowerBound"), step.get("MetricIntervalUpperBound")
        if lower is None and upper is None and len(steps) > 1:
            raise ValidationException("Only one step adjustment may leave both bounds null.")
        low = -math.inf if lower is None else float(lower)
        high = math.inf if upper is None else float(upper)
        if low >= high:
            raise ValidationException("The upper bound of a step adjustment must be greater than its lower bound.")
        intervals.append((low, high))
    intervals.sort()
    for (_, high), (low, _) in zip(intervals, intervals[1:], strict=False):
        if high > low:
            raise ValidationException("Step adjustments must not overlap.")
        if high < low:
            raise ValidationException("There must be no gaps between step adjustments.")
    if sum(1 for low, _ in intervals if low == -math.inf) > 1 or sum(
            1 for _, high in intervals if high == math.inf) > 1:
        raise ValidationException("Only one step adjustment may have a null lower bound, and one a null upper bound.")
