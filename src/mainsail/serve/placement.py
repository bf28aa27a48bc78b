"""Where a model call runs: on the worker's event loop, or in its predict thread pool.

Handing a call to a thread and back costs tens of microseconds (two context switches and the GIL
hand-over), which is most of a fast model's overhead. A call that takes that little is cheaper on
the event loop; one that takes longer belongs in the pool, so the loop keeps reading, answering
``/ping`` and timing out requests while it runs. ``Placement`` decides from measured call times:

* ``auto`` (the default): calls start in the pool, and each call's wall-clock time is measured (a
  thread's CPU clock would tell computing from waiting, but reading it is a system call, which on a
  busy machine cost more than the hand-off it would save). Times measured in the pool are inflated
  by the other threads (the GIL), so the pool only says whether a trial is worth it: when the median
  of a window of ``WINDOW`` calls is under ``SLOW_FACTOR`` times ``loop_max_s``, the next window runs
  on the loop, where times are the model's own (plus what other processes take of the cores).
  Calls stay on the loop while each window's median is under ``loop_max_s``; otherwise they go back
  to the pool, and the next trial waits twice as long as the last (up to ``MAX_BACKOFF`` windows).
  Calls on the loop that take more than ``SLOW_FACTOR`` times ``loop_max_s`` send the next calls
  back to the pool at once: the second such call in a window (one alone is most often the process
  losing its core to another for a time slice), or the first that takes ``STALL_FACTOR`` times it.
* ``loop``: always on the event loop (one call at a time per worker);
* ``threads``: always in the pool.

On the loop a call cannot be interrupted: one that outlives the timeout is answered 504 when it
returns, late (in the pool it is answered at the timeout while its thread runs on).
"""

from __future__ import annotations

import logging
from typing import Literal

logger = logging.getLogger(__name__)

PlacementMode = Literal["auto", "loop", "threads"]
WINDOW = 32
SLOW_FACTOR = 10.0
STALL_FACTOR = 100.0
MAX_BACKOFF = 64


class Placement:
    """Decides, call by call, whether the next model call runs on the event loop."""

    def __init__(self, mode: PlacementMode = "auto", loop_max_s: float = 0.002) -> None:
        if mode not in ("auto", "loop", "threads"):
            raise ValueError(f"placement must be auto, loop or threads, got {mode!r}")
        if loop_max_s <= 0:
            raise ValueError(f"loop_max_s must be positive, got {loop_max_s}")
        self.mode = mode
        self.loop_max_s = loop_max_s
        self.on_loop = mode == "loop"
        """Where the next call runs."""
        self._window: list[float] = []
        self._backoff = 1
        """Windows in the pool before the next trial on the loop."""
        self._wait = 0
        self._slow = 0
        """Calls on the loop over ``SLOW_FACTOR`` times the limit in this window."""
        self._told = False

    def observe(self, seconds: float) -> None:
        """Record one call's wall-clock seconds (``auto`` moves calls between the loop and the pool)."""
        if self.mode != "auto":
            return
        limit = self.loop_max_s
        if self.on_loop and seconds > SLOW_FACTOR * limit:
            self._slow += 1
            if self._slow > 1 or seconds > STALL_FACTOR * limit:
                self._to_pool(f"a call took {seconds * 1e3:.2f} ms")
                return
        window = self._window
        window.append(seconds)
        if len(window) < WINDOW:
            return
        window.sort()
        median = window[WINDOW // 2]
        window.clear()
        self._slow = 0
        measured = f"the median call took {median * 1e3:.3f} ms"
        if self.on_loop:
            if median >= limit:
                self._to_pool(measured)
            else:
                self._backoff = 1
                self._tell(measured)
        elif self._wait > 0:
            self._wait -= 1
        elif median < SLOW_FACTOR * limit:
            self.on_loop = True  # a trial: the next window measures calls on the loop

    def _to_pool(self, why: str) -> None:
        self._window.clear()
        self._slow = 0
        self.on_loop = False
        self._wait = self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._tell(why)

    def _tell(self, why: str) -> None:
        where = "on the event loop" if self.on_loop else "in the predict threads"
        log = logger.debug if self._told else logger.info
        self._told = True
        log("%s (limit %.3f ms): model calls run %s", why, self.loop_max_s * 1e3, where)
