"""Alarm evaluation: :func:`alarm_state` (the "M out of N" rule with ``TreatMissingData``, a pure
function) and :class:`AlarmEvaluator`, the background task of ``mainsail up`` that evaluates every alarm
once a (time-scaled) minute over its last ``EvaluationPeriods`` complete periods and runs the actions of
the states they move to.

As CloudWatch: a datapoint breaches when it compares with the threshold as ``ComparisonOperator`` says;
``DatapointsToAlarm`` (M, default ``EvaluationPeriods``, N) breaching datapoints among the last N periods
make ALARM. Missing periods count as breaching (``breaching``), as not breaching (``notBreaching``), or are
left out (``missing``, ``ignore``): with every period missing, ``missing`` goes to INSUFFICIENT_DATA and
``ignore`` keeps the state. Otherwise the alarm is OK. (CloudWatch also looks further back than N periods
when some are missing; mainsail does not.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import operator
import time
from collections.abc import Callable, Sequence
from typing import Any

from mainsail.aws.cloudwatch.actions import REPEATING_PREFIXES, AlarmActions
from mainsail.aws.cloudwatch.alarms import Alarms, Transition
from mainsail.aws.cloudwatch.datapoints import TimeScale
from mainsail.aws.cloudwatch.metric_data import query_results
from mainsail.aws.cloudwatch.statistics import series
from mainsail.aws.cloudwatch.store import MetricStore

logger = logging.getLogger(__name__)

_COMPARE: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (operator.ge, "greater than or equal to"),
    "GreaterThanThreshold": (operator.gt, "greater than"),
    "LessThanThreshold": (operator.lt, "less than"),
    "LessThanOrEqualToThreshold": (operator.le, "less than or equal to"),
}
_ACTION_LISTS = {"ALARM": "AlarmActions", "OK": "OKActions", "INSUFFICIENT_DATA": "InsufficientDataActions"}


def alarm_state(values: Sequence[float | None], threshold: float, comparison: str, datapoints_to_alarm: int,
                treat_missing: str, current: str) -> str:
    """The state an alarm goes to given its last N periods' values (oldest first, None where missing)."""
    compare = _COMPARE[comparison][0]
    breaching = not_breaching = 0
    for value in values:
        if value is None:
            if treat_missing == "breaching":
                breaching += 1
            elif treat_missing == "notBreaching":
                not_breaching += 1
        elif compare(value, threshold):
            breaching += 1
        else:
            not_breaching += 1
    if breaching >= datapoints_to_alarm:
        return "ALARM"
    if breaching + not_breaching == 0:
        return current if treat_missing == "ignore" else "INSUFFICIENT_DATA"
    return "OK"


class AlarmEvaluator:
    """Evaluates ``alarms`` against ``store`` every (scaled) minute and runs their actions through
    ``actions``. :meth:`start` and :meth:`stop` belong to the app's lifespan."""

    def __init__(self, alarms: Alarms, store: MetricStore, scale: TimeScale, actions: AlarmActions) -> None:
        self.alarms = alarms
        self.store = store
        self.scale = scale
        self.actions = actions
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._evaluation: asyncio.Future[None] | None = None

    # -- one evaluation (blocking: runs in a thread) ---------------------------------------------------

    def evaluate(self, now: float) -> None:
        """Evaluate every alarm over the periods complete at real time ``now``."""
        for alarm in self.alarms.store.all():
            try:
                self._evaluate_one(alarm, now)
            except Exception:
                logger.exception("evaluating alarm %s failed", alarm.get("AlarmName"))

    def _evaluate_one(self, alarm: dict[str, Any], now: float) -> None:
        period = int(alarm.get("Period") or _metrics_period(alarm))
        n = int(alarm["EvaluationPeriods"])
        m = int(alarm.get("DatapointsToAlarm") or n)
        length = self.scale.real_seconds(period)
        end = math.floor(now / length) * length
        start = end - n * length
        if alarm.get("Metrics"):
            results = query_results(self.store, self.scale, alarm["Metrics"], start, end)
            points = results[0].points if results else []
        else:
            statistic = alarm.get("Statistic") or alarm["ExtendedStatistic"]
            metric = {k: alarm.get(k) for k in ("Namespace", "MetricName", "Dimensions")}
            points = series(self.store, self.scale, metric, statistic, period, start, end, alarm.get("Unit"))
        by_time = dict(points)
        stamps = [start + i * length for i in range(n)]
        values = [_near(by_time, ts, length) for ts in stamps]
        threshold, comparison = float(alarm["Threshold"]), str(alarm["ComparisonOperator"])
        state = alarm_state(values, threshold, comparison, m, alarm.get("TreatMissingData", "missing"),
                            alarm["StateValue"])
        present = [(ts, v) for ts, v in zip(stamps, values, strict=True) if v is not None]
        breaching = sum(1 for _, v in present if _COMPARE[comparison][0](v, threshold))
        shown = ", ".join(f"{v:g} ({_iso(ts)})" for ts, v in reversed(present))
        if state == "INSUFFICIENT_DATA":
            reason = f"Insufficient Data: {n} datapoint{'s were' if n > 1 else ' was'} unknown."
        else:
            reason = (f"Threshold Crossed: {breaching} out of the last {n} datapoints [{shown}] "
                      f"{'was' if breaching == 1 else 'were'} {'' if state == 'ALARM' else 'not '}"
                      f"{_COMPARE[comparison][1]} the threshold ({threshold:g}) (minimum {m} datapoint"
                      f"{'s' if m > 1 else ''} for {alarm['StateValue']} -> {state} transition).")
        data = {"version": "1.0", "queryDate": _iso(now), "startDate": _iso(start), "period": period,
                "recentDatapoints": [v for _, v in present], "threshold": threshold,
                "evaluatedDatapoints": [{"timestamp": _iso(ts), "value": v} for ts, v in reversed(present)]}
        if alarm.get("Statistic") or alarm.get("ExtendedStatistic"):
            data["statistic"] = alarm.get("Statistic") or alarm.get("ExtendedStatistic")
        self.alarms.set_state(alarm, state, reason, json.dumps(data), repeat=True)

    # -- actions (on the event loop) --------------------------------------------------------------------

    def _transitioned(self, transition: Transition) -> None:
        """``Alarms.on_transition``: called from any thread; the actions run on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._spawn, transition)

    def _spawn(self, transition: Transition) -> None:
        task = asyncio.ensure_future(self._act(transition))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _act(self, transition: Transition) -> None:
        alarm = transition.alarm
        if not alarm.get("ActionsEnabled", True):
            return
        changed = transition.old_state != transition.new_state
        arns = [a for a in alarm.get(_ACTION_LISTS[transition.new_state], [])
                if changed or a.startswith(REPEATING_PREFIXES)]
        if not arns:
            return
        try:
            reason_data = json.loads(transition.reason_data or alarm.get("StateReasonData") or "{}")
        except ValueError:
            reason_data = {}
        for arn in arns:
            failure = await self.actions.run(arn, alarm["AlarmName"], transition.new_state, reason_data)
            if changed:  # a repeating action (every evaluation while the state holds) is not history
                await asyncio.to_thread(self.alarms.record_action, alarm["AlarmName"], arn, failure)

    # -- the task -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.alarms.on_transition = self._transitioned
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.alarms.on_transition = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._evaluation is not None:  # the thread goes on after a cancel: let it end before the stores close
            await asyncio.gather(self._evaluation, return_exceptions=True)
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def _run(self) -> None:
        tick = self.scale.period_s
        while True:
            now = time.time()
            # a quarter into each (scaled) minute, so that the minute just ended is complete: the router's
            # datapoints for it are written as it ends, and a PutMetricData may come a moment late
            await asyncio.sleep(tick - now % tick + 0.25 * tick)
            self._evaluation = asyncio.ensure_future(asyncio.to_thread(self.evaluate, time.time()))
            try:
                await asyncio.shield(self._evaluation)
            except Exception:
                logger.exception("alarm evaluation failed")


def _near(by_time: dict[float, float], ts: float, length: float) -> float | None:
    for key, value in by_time.items():
        if abs(key - ts) < length * 1e-6:
            return value
    return None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}+0000"


def _metrics_period(alarm: dict[str, Any]) -> int:
    for query in alarm.get("Metrics") or []:
        if query.get("MetricStat"):
            return int(query["MetricStat"]["Period"])
        if query.get("Period"):
            return int(query["Period"])
    return 60
