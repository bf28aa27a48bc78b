"""Alarm actions: what an alarm's ``AlarmActions`` / ``OKActions`` / ``InsufficientDataActions`` ARNs
reach. A subscriber (Application Auto Scaling, for ``arn:aws:autoscaling:`` policy ARNs) registers a
callback for an ARN prefix; the alarm evaluator calls it with the alarm's name, its new state and the
state's reason data (``StateReasonData``, parsed)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

ActionCallback = Callable[[str, str, dict[str, Any]], "Awaitable[None] | None"]
"""``callback(alarm_name, state, reason_data)``; a coroutine function is awaited."""

#: actions CloudWatch repeats at every evaluation while the alarm stays in the state (Auto Scaling's), not
#: only when it changes
REPEATING_PREFIXES = ("arn:aws:autoscaling:",)


class AlarmActions:
    """The registry of action callbacks, by ARN prefix (the longest registered prefix of an ARN wins)."""

    def __init__(self) -> None:
        self._callbacks: dict[str, ActionCallback] = {}

    def register(self, prefix: str, callback: ActionCallback) -> None:
        """Call ``callback`` for every action ARN starting with ``prefix`` (replacing one registered before)."""
        if not prefix:
            raise ValueError("an alarm action prefix must not be empty (e.g. 'arn:aws:autoscaling:')")
        self._callbacks[prefix] = callback

    def unregister(self, prefix: str) -> None:
        self._callbacks.pop(prefix, None)

    def callback(self, arn: str) -> ActionCallback | None:
        matches = [p for p in self._callbacks if arn.startswith(p)]
        return self._callbacks[max(matches, key=len)] if matches else None

    async def run(self, arn: str, alarm_name: str, state: str, reason_data: dict[str, Any]) -> str | None:
        """Call ``arn``'s callback: None when it succeeded, else why not (no subscriber, or its error)."""
        callback = self.callback(arn)
        if callback is None:
            return "no subscriber for this action"
        try:
            result = callback(alarm_name, state, reason_data)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            logger.exception("alarm action %s of %s failed", arn, alarm_name)
            return f"{type(exc).__name__}: {exc}"
        return None
