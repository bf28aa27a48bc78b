"""The scaler: what makes Application Auto Scaling act on SageMaker variants.

- A policy's alarm fires (CloudWatch's evaluator calls the callback :meth:`Scaler.watch` registered for the
  policy's ARN, again at every evaluation while the alarm stays in ALARM): :meth:`Scaler.on_alarm` works out
  the new capacity (step scaling: the step whose bounds hold the breaching value's distance from the
  threshold; target tracking: ``ceil(current * metric / target)``), clamps it to the target's Min/Max, and,
  unless a cooldown or the SuspendedState holds it back, starts a scaling activity.
- Every tick (:meth:`Scaler.step`, a background task of ``mainsail up``): in-progress activities advance
  (the variant's DesiredInstanceCount is set through ``UpdateEndpointWeightsAndCapacities``, the SageMaker
  API's own path, so DescribeEndpoint shows it move, and the activity is Successful once the reconciler
  runs that many instances), scheduled actions that came due change Min/Max, capacities outside Min/Max are
  brought inside, and targets whose endpoint is gone are deregistered.

Cooldowns run on the metrics clock (``TimeScale``): with ``MAINSAIL_METRICS_TIME_SCALE=60`` a 300 s
cooldown lasts five real seconds. One activity at a time per target: a decision taken while one is in
progress is dropped (the alarm fires again at its next evaluation)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mainsail.aws.cloudwatch.actions import AlarmActions
from mainsail.aws.cloudwatch.alarms import Alarms
from mainsail.aws.cloudwatch.datapoints import TimeScale
from mainsail.aws.errors import ValidationException
from mainsail.hosting.calls import Call
from mainsail.hosting.endpoints import ENDPOINT, EndpointStatus, update_endpoint_weights_and_capacities
from mainsail.hosting.store import Record, StateStore
from mainsail.scaling import adjust, schedules, tracking
from mainsail.scaling.records import (
    ACTIVITY,
    POLICY,
    SCHEDULED,
    TARGET,
    Variant,
    activity_name,
    finish_activity,
    in_progress,
    start_activity,
    variant_of,
)

logger = logging.getLogger(__name__)

DEFAULT_COOLDOWN = 300.0
#: real seconds after which an activity still in progress is given up as Failed
ACTIVITY_TIMEOUT = 900.0


class Scaler:
    """Scales the variants registered in ``store``; alarms through ``alarms``, whose actions reach it through
    ``actions``; cooldowns and rates on ``scale``. :meth:`start` / :meth:`stop` belong to the app's lifespan."""

    def __init__(self, store: StateStore, alarms: Alarms, actions: AlarmActions, scale: TimeScale, *,
                 clock: Callable[[], float] = time.time, tick: float | None = None) -> None:
        self.store = store
        self.alarms = alarms
        self.actions = actions
        self.scale = scale
        self.clock = clock
        self.tick = tick if tick is not None else max(0.1, min(1.0, scale.period_s / 4))
        self._lock = threading.RLock()
        self._task: asyncio.Task[None] | None = None

    # -- the task ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to every stored policy's alarms and start ticking (on the running loop)."""
        for policy in self.store.list(POLICY):
            self.watch(policy)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mainsail-scaler")

    async def stop(self) -> None:
        for policy in self.store.list(POLICY):
            self.actions.unregister(policy["PolicyARN"])
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await asyncio.to_thread(self.step, self.clock())
            except Exception:
                logger.exception("scaling step failed")

    def step(self, now: float) -> None:
        """One pass: advance activities, run due scheduled actions, keep capacities within bounds, forget
        the targets of deleted endpoints."""
        with self._lock:
            for activity in in_progress(self.store):
                self._advance(activity, now)
            for action in self.store.list(SCHEDULED):
                due = action.get("_NextRun")
                if due is not None and now >= float(due):
                    self._run_scheduled(action, now)
            for target in self.store.list(TARGET):
                variant = variant_of(target)
                if self.store.get(ENDPOINT, variant.endpoint) is None:
                    logger.info("endpoint %s is gone: deregistering scalable target %s", variant.endpoint,
                                target["ResourceId"])
                    self.forget(target["ResourceId"])
                else:
                    self.enforce_bounds(target["ResourceId"], now)

    # -- capacity -----------------------------------------------------------------------------------------

    def current(self, variant: Variant) -> int | None:
        """The variant's DesiredInstanceCount now; None when its endpoint or the variant is gone."""
        record = self.store.get(ENDPOINT, variant.endpoint)
        for pv in (record or {}).get("ProductionVariants", []):
            if pv["VariantName"] == variant.variant:
                return int(pv.get("DesiredInstanceCount", 1))
        return None

    def enforce_bounds(self, resource_id: str, now: float | None = None) -> None:
        """Bring the target's capacity inside its Min/Max (an activity caused by the bound), unless one is
        in progress already."""
        now = self.clock() if now is None else now
        with self._lock:
            target = self.store.get(TARGET, resource_id)
            current = None if target is None else self.current(variant_of(target))
            if target is None or current is None:
                return
            wanted = adjust.clamp(current, int(target["MinCapacity"]), int(target["MaxCapacity"]))
            if wanted != current and not self._busy(resource_id, now):
                bound = "minimum" if wanted > current else "maximum"
                self._begin(target, wanted, f"{bound} capacity was set to {wanted}", now)

    def _busy(self, resource_id: str, now: float) -> bool:
        """Whether an activity of the target is still in progress (after advancing those that were)."""
        for activity in in_progress(self.store, resource_id):
            self._advance(activity, now)
        return bool(in_progress(self.store, resource_id))

    def _begin(self, target: Record, capacity: int, cause: str, now: float, **internal: Any) -> None:
        activity = start_activity(self.store, target, capacity, cause, now, **internal)
        logger.info("scaling %s to %d: %s", target["ResourceId"], capacity, cause)
        self._advance(activity, now)

    def _advance(self, activity: Record, now: float) -> None:
        variant = variant_of(activity)
        wanted = int(activity["_Capacity"])
        record = self.store.get(ENDPOINT, variant.endpoint)
        pv = next((p for p in (record or {}).get("ProductionVariants", []) if p["VariantName"] == variant.variant),
                  None)
        failed = f"Failed to set desired instance count to {wanted}. Reason: "
        if record is None or pv is None:
            finish_activity(self.store, activity, "Failed", failed + f"Could not find {variant.resource_id}.", now)
            return
        status = record["EndpointStatus"]
        if status in (EndpointStatus.FAILED, EndpointStatus.DELETING):
            finish_activity(self.store, activity, "Failed", failed + f"The endpoint is {status}.", now)
            return
        if now - float(activity["StartTime"]) > ACTIVITY_TIMEOUT:
            finish_activity(self.store, activity, "Failed", failed + "The endpoint did not reach it in time.", now)
            return
        if not activity.get("_Requested"):
            if status != EndpointStatus.IN_SERVICE:
                return  # another update is under way: after it
            if int(pv.get("DesiredInstanceCount", 1)) != wanted:
                body = {"EndpointName": variant.endpoint,
                        "DesiredWeightsAndCapacities": [{"VariantName": variant.variant,
                                                         "DesiredInstanceCount": wanted}]}
                try:
                    update_endpoint_weights_and_capacities(Call(self.store, activity["_Region"], body))
                except ValidationException as exc:
                    if (self.store.get(ENDPOINT, variant.endpoint) or {}).get("EndpointStatus") \
                            != EndpointStatus.IN_SERVICE:
                        return  # raced with another update: try again next tick
                    finish_activity(self.store, activity, "Failed", failed + exc.message, now)
                    return
            self.store.update(ACTIVITY, activity_name(activity), lambda a: {**a, "_Requested": True})
            return
        if status != EndpointStatus.IN_SERVICE:
            return
        if int(pv.get("DesiredInstanceCount", 1)) != wanted:
            finish_activity(self.store, activity, "Failed",
                            failed + "The desired instance count was changed by another request.", now)
        elif int(pv.get("CurrentInstanceCount", 0)) == wanted:
            finish_activity(self.store, activity, "Successful",
                            f"Successfully set desired instance count to {wanted}. "
                            "Change successfully fulfilled by sagemaker.", now)

    # -- policies -------------------------------------------------------------------------------------

    def watch(self, policy: Record) -> None:
        """Have the alarms that act on ``policy``'s ARN reach :meth:`on_alarm`."""
        key = str(policy["_Key"])

        async def act(alarm_name: str, state: str, reason_data: dict[str, Any]) -> None:
            await asyncio.to_thread(self.on_alarm, key, alarm_name, state, reason_data)

        self.actions.register(policy["PolicyARN"], act)

    def delete_policy(self, policy: Record) -> None:
        """Delete ``policy``, the alarms it made (target tracking), and its subscription."""
        self.actions.unregister(policy["PolicyARN"])
        names = [a["AlarmName"] for a in policy.get("Alarms", []) if policy["PolicyType"] == "TargetTrackingScaling"]
        self.delete_alarms(names)
        self.store.delete(POLICY, policy["_Key"])

    def delete_alarms(self, names: list[str]) -> None:
        existing = [n for n in names if self.alarms.store.get(n) is not None]
        if existing:
            self.alarms.delete_alarms({"AlarmNames": existing})

    def forget(self, resource_id: str) -> None:
        """Deregister a scalable target: its policies (and their alarms), scheduled actions, the target."""
        with self._lock:
            for policy in self.store.list(POLICY):
                if policy["ResourceId"] == resource_id:
                    self.delete_policy(policy)
            for action in self.store.list(SCHEDULED):
                if action["ResourceId"] == resource_id:
                    self.store.delete(SCHEDULED, action["_Key"])
            self.store.delete(TARGET, resource_id)

    def on_alarm(self, key: str, alarm_name: str, state: str, reason_data: dict[str, Any]) -> None:
        """An alarm acting on policy ``key`` is in ``state`` (CloudWatch's ``StateReasonData`` parsed)."""
        if state != "ALARM":
            return
        with self._lock:
            policy = self.store.get(POLICY, key)
            target = self.store.get(TARGET, policy["ResourceId"]) if policy else None
            now = self.clock()
            if policy is None or target is None or self._busy(target["ResourceId"], now):
                return
            current = self.current(variant_of(target))
            if current is None:
                return
            wanted = self._decide(policy, alarm_name, current, reason_data)
            if wanted is None:
                return
            wanted = adjust.clamp(wanted, int(target["MinCapacity"]), int(target["MaxCapacity"]))
            if wanted == current:
                return
            out = wanted > current
            suspended = target.get("SuspendedState") or {}
            if suspended.get("DynamicScalingOutSuspended" if out else "DynamicScalingInSuspended"):
                return
            if self._cooling(policy, out, now):
                return
            mark = {"At": now, "From": current}
            self.store.update(POLICY, key, lambda p: {**p, "_LastOut" if out else "_LastIn": mark})
            cause = f"monitor alarm {alarm_name} in state ALARM triggered policy {policy['PolicyName']}"
            self._begin(target, wanted, cause, now, Policy=key)

    def _decide(self, policy: Record, alarm_name: str, current: int, reason_data: dict[str, Any]) -> int | None:
        values = [float(v) for v in reason_data.get("recentDatapoints") or []]
        if policy["PolicyType"] == "TargetTrackingScaling":
            if not values:
                return None
            config = policy["TargetTrackingScalingPolicyConfiguration"]
            wanted = adjust.tracking_capacity(current, values[-1], float(config["TargetValue"]))
            high = tracking.is_high(alarm_name)
            if (high and wanted <= current) or (not high and (wanted >= current or config.get("DisableScaleIn"))):
                return None
            return wanted
        config = policy["StepScalingPolicyConfiguration"]
        value = adjust.aggregate(values, config.get("MetricAggregationType"))
        threshold = reason_data.get("threshold")
        if threshold is None:
            alarm = self.alarms.store.get(alarm_name)
            threshold = alarm.get("Threshold") if alarm else None
        if value is None or threshold is None:
            return None
        step = adjust.choose_step(config["StepAdjustments"], value - float(threshold))
        if step is None:
            return None
        return adjust.adjusted(current, config.get("AdjustmentType", "ChangeInCapacity"),
                               float(step["ScalingAdjustment"]), config.get("MinAdjustmentMagnitude"))

    def _cooling(self, policy: Record, out: bool, now: float) -> bool:
        """Whether a cooldown holds this scale-out / scale-in back: a scale-out waits for the last scale-out's
        cooldown, a scale-in for the last scale-in's and the last scale-out's."""
        if policy["PolicyType"] == "TargetTrackingScaling":
            config = policy["TargetTrackingScalingPolicyConfiguration"]
            out_s = float(config.get("ScaleOutCooldown", DEFAULT_COOLDOWN))
            in_s = float(config.get("ScaleInCooldown", DEFAULT_COOLDOWN))
        else:
            out_s = in_s = float(policy["StepScalingPolicyConfiguration"].get("Cooldown", DEFAULT_COOLDOWN))

        def within(mark: str, seconds: float) -> bool:
            last = policy.get(mark)
            return last is not None and now < float(last["At"]) + self.scale.real_seconds(seconds)

        return within("_LastOut", out_s) or (not out and within("_LastIn", in_s))

    # -- scheduled actions ------------------------------------------------------------------------------

    def next_run(self, action: Record, after: float) -> float | None:
        """When ``action`` runs next after ``after`` (None: never again, or past its EndTime)."""
        schedule = schedules.parse(action["Schedule"])
        start = action.get("StartTime")
        origin = float(start) if start is not None else float(action["CreationTime"])
        due = schedules.next_run(schedule, max(after, origin - 1e-6) if start is not None else after,
                                 origin=origin, tz=schedules.zone(action.get("Timezone")), scale=self.scale)
        end = action.get("EndTime")
        return None if due is None or (end is not None and due > float(end)) else due

    def _run_scheduled(self, action: Record, now: float) -> None:
        due = self.next_run(action, now)
        self.store.update(SCHEDULED, action["_Key"], lambda a: {**a, "_NextRun": due})
        target = self.store.get(TARGET, action["ResourceId"])
        if target is None or (target.get("SuspendedState") or {}).get("ScheduledScalingSuspended"):
            return
        bounds = {k: int(v) for k, v in (action.get("ScalableTargetAction") or {}).items() if v is not None}
        minimum = bounds.get("MinCapacity", int(target["MinCapacity"]))
        maximum = bounds.get("MaxCapacity", int(target["MaxCapacity"]))
        if maximum < minimum:  # one bound given, crossing the other: the given one wins
            minimum, maximum = (minimum, minimum) if "MinCapacity" in bounds else (maximum, maximum)
        target = self.store.update(TARGET, target["ResourceId"],
                                   lambda t: {**t, "MinCapacity": minimum, "MaxCapacity": maximum}) or target
        logger.info("scheduled action %s: %s capacity %d-%d", action["ScheduledActionName"], target["ResourceId"],
                    minimum, maximum)
        current = self.current(variant_of(target))
        if current is None or self._busy(target["ResourceId"], now):
            return
        wanted = adjust.clamp(current, minimum, maximum)
        if wanted != current:
            self._begin(target, wanted, f"scheduled action name {action['ScheduledActionName']} was triggered", now)
