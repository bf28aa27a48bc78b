"""Scheduled actions' schedules as Application Auto Scaling reads them: ``at(yyyy-mm-ddThh:mm:ss)`` (once),
``rate(value unit)`` (every so long) and ``cron(minutes hours day-of-month month day-of-week year)``,
in the action's ``Timezone`` (UTC by default). A rate's interval runs on the metrics clock
(:class:`~mainsail.aws.cloudwatch.datapoints.TimeScale`), like cooldowns; ``at`` and ``cron`` name
wall-clock times and are not scaled."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mainsail.aws.cloudwatch.datapoints import TimeScale
from mainsail.aws.errors import ValidationException

_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}
_MONTHS = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
#: (low, high, names) of each cron field
_FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}), (0, 23, {}), (1, 31, {}), (1, 12, _MONTHS), (1, 7, _DAYS), (1970, 2199, {}))
#: how far ahead a cron schedule is searched for its next time
_HORIZON_DAYS = 366 * 5


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``kind`` at / rate / cron, with ``at`` (naive local time), ``every`` (seconds
    of metric time) or ``fields`` (the allowed values of each cron field; None for ``?``)."""

    kind: str
    at: dt.datetime | None = None
    every: float = 0.0
    fields: tuple[frozenset[int] | None, ...] = ()


def invalid(expression: str, why: str = "") -> ValidationException:
    return ValidationException(f"Schedule expression {expression!r} is invalid{': ' + why if why else ''}.")


def parse(expression: str) -> Schedule:
    """``expression`` as a :class:`Schedule`; ValidationException when it is not one."""
    match = re.fullmatch(r"\s*(at|rate|cron)\((.*)\)\s*", expression)
    if match is None:
        raise invalid(expression, "it must be at(...), rate(...) or cron(...)")
    kind, inner = match.group(1), match.group(2).strip()
    if kind == "at":
        try:
            return Schedule("at", at=dt.datetime.strptime(inner, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            raise invalid(expression, "at() takes yyyy-mm-ddThh:mm:ss") from None
    if kind == "rate":
        parts = inner.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) < 1 or parts[1] not in _UNITS:
            raise invalid(expression, "rate() takes a positive whole number and minute(s), hour(s) or day(s)")
        return Schedule("rate", every=float(int(parts[0]) * _UNITS[parts[1]]))
    parts = inner.split()
    if len(parts) != 6:
        raise invalid(expression, "cron() takes six fields: minutes hours day-of-month month day-of-week year")
    fields = tuple(_field(expression, text, *spec) for text, spec in zip(parts, _FIELDS, strict=True))
    if (fields[2] is None) == (fields[4] is None):
        raise invalid(expression, "exactly one of day-of-month and day-of-week must be '?'")
    return Schedule("cron", fields=fields)


def _value(expression: str, text: str, low: int, high: int, names: dict[str, int]) -> int:
    value = names.get(text.upper()) if names else None
    if value is None:
        if not text.isdigit():
            raise invalid(expression, f"{text!r} is not supported by mainsail")
        value = int(text)
    if not low <= value <= high:
        raise invalid(expression, f"{text} is out of range {low}-{high}")
    return value


def _field(expression: str, text: str, low: int, high: int, names: dict[str, int]) -> frozenset[int] | None:
    if text == "?":
        return None
    allowed: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = _value(expression, step_text, 1, high, {}) if step_text else 1
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            first, last = _value(expression, a, low, high, names), _value(expression, b, low, high, names)
        else:
            first = _value(expression, base, low, high, names)
            last = high if step_text else first
        allowed.update(range(first, last + 1, step))
    return frozenset(allowed)


def zone(name: str | None) -> ZoneInfo:
    """The IANA time zone ``name`` (UTC when None); ValidationException when unknown."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationException(f"Time zone {name} is not a valid IANA time zone.") from None


def next_run(schedule: Schedule, after: float, *, origin: float, tz: ZoneInfo, scale: TimeScale) -> float | None:
    """The first time (epoch seconds) strictly after ``after`` that ``schedule`` runs; None if never.
    A rate counts its intervals from ``origin`` (the action's StartTime, or when it was put)."""
    if schedule.kind == "at":
        assert schedule.at is not None
        when = schedule.at.replace(tzinfo=tz).timestamp()
        return when if when > after else None
    if schedule.kind == "rate":
        every = scale.real_seconds(schedule.every)
        done = max(0, int((after - origin) // every))
        return origin + (done + 1) * every
    return _next_cron(schedule.fields, after, tz)


def _next_cron(fields: tuple[frozenset[int] | None, ...], after: float, tz: ZoneInfo) -> float | None:
    minutes, hours, days, months, weekdays, years = fields
    assert minutes is not None and hours is not None and months is not None and years is not None
    start = dt.datetime.fromtimestamp(after, tz).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    day = start.date()
    for _ in range(_HORIZON_DAYS):
        weekday = (day.weekday() + 1) % 7 + 1  # Monday is 0 in Python, 2 in cron (Sunday is 1)
        if day.year in years and day.month in months and (
                (days is None or day.day in days) and (weekdays is None or weekday in weekdays)):
            for hour in sorted(hours):
                for minute in sorted(minutes):
                    when = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
                    if when >= start:
                        return when.timestamp()
        day += dt.timedelta(days=1)
    return None
