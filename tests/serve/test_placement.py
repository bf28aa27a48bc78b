"""Where model calls run (``mainsail.serve.placement``): the event loop for calls measured fast, the
predict threads otherwise; the 504 timeout and the predict-threads limit hold in both places."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mainsail.handlers.script import ScriptHandler
from mainsail.serve.placement import MAX_BACKOFF, SLOW_FACTOR, STALL_FACTOR, WINDOW, Placement
from tests.conftest import LiveApp, live_app, write_script

LIMIT = 0.001


def feed(placement: Placement, seconds: float, calls: int = WINDOW) -> None:
    for _ in range(calls):
        placement.observe(seconds)


def test_fast_calls_move_to_the_loop_after_a_trial_window() -> None:
    placement = Placement("auto", LIMIT)
    assert not placement.on_loop
    feed(placement, 0.003)  # in the pool (where the GIL inflates times): under SLOW_FACTOR x the limit
    assert placement.on_loop
    feed(placement, 0.0004)  # the trial on the loop: under the limit, calls stay there
    assert placement.on_loop
    feed(placement, 0.0004)
    assert placement.on_loop


def test_calls_slow_in_the_pool_never_try_the_loop() -> None:
    placement = Placement("auto", LIMIT)
    for _ in range(10):
        feed(placement, SLOW_FACTOR * LIMIT * 2)
        assert not placement.on_loop


def test_a_trial_over_the_limit_goes_back_and_waits_longer_each_time() -> None:
    placement = Placement("auto", LIMIT)
    waits = []
    for _ in range(9):
        feed(placement, 0.0005)  # pool window: a trial follows
        windows = 0
        while not placement.on_loop:
            windows += 1
            feed(placement, 0.0005)
        waits.append(windows)
        feed(placement, 0.002)  # the trial's median is over the limit: back to the pool
        assert not placement.on_loop
    assert waits[:8] == [0, 1, 2, 4, 8, 16, 32, 64]
    assert waits[8] == MAX_BACKOFF


def test_a_second_slow_call_on_the_loop_sends_the_next_to_the_pool() -> None:
    placement = Placement("auto", LIMIT)
    feed(placement, 0.0002)
    assert placement.on_loop
    placement.observe(SLOW_FACTOR * LIMIT * 1.5)  # one alone: a lost time slice, most often
    assert placement.on_loop
    feed(placement, 0.0002, 5)
    placement.observe(SLOW_FACTOR * LIMIT * 1.5)
    assert not placement.on_loop


def test_one_stalled_call_on_the_loop_sends_the_next_to_the_pool() -> None:
    placement = Placement("auto", LIMIT)
    feed(placement, 0.0002)
    assert placement.on_loop
    placement.observe(STALL_FACTOR * LIMIT * 1.5)
    assert not placement.on_loop


def test_calls_over_the_limit_on_the_loop_go_back_to_the_pool() -> None:
    placement = Placement("auto", LIMIT)
    feed(placement, 0.004)  # 4 ms (I/O, say) in the pool: a trial
    assert placement.on_loop
    feed(placement, 0.004)  # on the loop it blocks it 4 ms a call: back
    assert not placement.on_loop


@pytest.mark.parametrize("mode", ["loop", "threads"])
def test_a_forced_placement_never_moves(mode: str) -> None:
    placement = Placement(mode, LIMIT)  # type: ignore[arg-type]
    feed(placement, 5.0, WINDOW * 3)
    feed(placement, 0.00001, WINDOW * 3)
    assert placement.on_loop is (mode == "loop")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="auto, loop or threads"):
        Placement("fast", LIMIT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        Placement("auto", 0)


# -- through a real server ---------------------------------------------------------------------------

SCRIPT = """
    import threading, time
    import numpy as np

    lock = threading.Lock()
    active = 0
    most = 0

    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        global active, most
        data = np.asarray(data, dtype=float)
        with lock:
            active += 1
            most = max(most, active)
        try:
            time.sleep(float(data.flat[0]))
        finally:
            with lock:
                active -= 1
        return {"thread": threading.current_thread().name, "most": most}
"""


@pytest.fixture
def script_model(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield write_script(tmp_path, textwrap.dedent(SCRIPT)), tmp_path


def call(app: LiveApp, sleep: float) -> tuple[int, dict[str, object]]:
    r = app.client.post("/invocations", content=f"[{sleep}]".encode(), headers={"content-type": "application/json"})
    return r.status_code, r.json()


def on_predict_thread(body: dict[str, object]) -> bool:
    return str(body["thread"]).startswith("mainsail-predict")


def test_auto_moves_fast_calls_onto_the_loop_and_a_slow_one_back(script_model: tuple[Path, Path]) -> None:
    with live_app(ScriptHandler(*script_model), timeout=30) as app:
        first = [call(app, 0)[1] for _ in range(WINDOW)]
        assert all(on_predict_thread(body) for body in first)  # the first window is measured in the pool
        later = [call(app, 0)[1] for _ in range(2 * WINDOW)]
        assert not on_predict_thread(later[-1])  # then on the event loop
        for _ in range(2):  # two slow calls (still on the loop) ...
            status, slow = call(app, SLOW_FACTOR * 0.001 * 3)
            assert status == 200 and not on_predict_thread(slow)
        assert on_predict_thread(call(app, 0)[1])  # ... and the next goes to the pool


@pytest.mark.parametrize("mode", ["loop", "threads"])
def test_a_call_past_the_timeout_is_504_in_both_places(script_model: tuple[Path, Path], mode: str) -> None:
    with live_app(ScriptHandler(*script_model), timeout=0.3, predict_placement=mode) as app:
        started = time.monotonic()
        status, body = call(app, 0.8)
        took = time.monotonic() - started
        assert status == 504 and body["error"] == "Timeout", body
        # in a thread it is answered at the timeout; on the loop when the call returns
        assert took < 0.7 if mode == "threads" else took >= 0.8
        status, body = call(app, 0)
        assert status == 200 and on_predict_thread(body) is (mode == "threads")


@pytest.mark.parametrize(("mode", "most"), [("loop", 1), ("threads", 2)])
def test_at_most_predict_threads_calls_at_once(script_model: tuple[Path, Path], mode: str, most: int) -> None:
    with live_app(ScriptHandler(*script_model), timeout=30, predict_threads=2, predict_placement=mode) as app, \
            ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: call(app, 0.3), range(4)))
    assert all(status == 200 for status, _ in answers)
    assert max(int(body["most"]) for _, body in answers) == most  # type: ignore[call-overload]
