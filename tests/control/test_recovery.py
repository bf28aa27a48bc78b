"""A control plane that stops (cleanly or not) and starts again over the same MAINSAIL_HOME, end to end
with real instances: running instances are adopted, dead ones started again, orphans reaped, and a
recorded pid that now belongs to another process is never signalled.

The same recovery on the in-memory backend, with an endpoint that cannot come back (its model data is
gone) turning Failed with the reason: tests/hosting/test_reconciler.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mainsail.hosting import endpoints as ep
from tests.control.helpers import INFERENCE_OK, WAIT, Plane, deploy, make_model_dir

pytestmark = pytest.mark.slow


def _crash(plane: Plane) -> None:
    """Stop a control plane the way a kill does: its instances keep running."""
    plane.reconciler.stop(stop_instances=False)
    plane.stop()
    plane.store.close()


def _reap(plane: Plane) -> None:
    """Collect the exit of the processes a crashed plane had started (stopped by its successor)."""
    for proc in plane.backend._procs.values():
        try:
            proc.wait(15)
        except Exception:
            proc.kill()
            proc.wait(5)


def _instances(plane: Plane, name: str) -> list[dict[str, Any]]:
    record = plane.store.get(ep.ENDPOINT, name)
    assert record is not None
    instances: list[dict[str, Any]] = record["Instances"]
    return instances


def _serves(plane: Plane, name: str, timeout: float = 60) -> list[float]:
    rt = plane.client("sagemaker-runtime")
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="1,0")
            result: list[float] = json.loads(out["Body"].read())
            return result
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def test_restart_adopts_running_instances_restarts_dead_ones_and_reaps_orphans(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    first = Plane(tmp_path).__enter__()
    try:
        sm = first.client("sagemaker")
        for name in ("keep", "revive", "orphan"):
            deploy(sm, name, make_model_dir(tmp_path / name, INFERENCE_OK))
        for name in ("keep", "revive", "orphan"):
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        pids = {name: _instances(first, name)[0]["pid"] for name in ("keep", "revive", "orphan")}
        first.store.delete(ep.ENDPOINT, "orphan")  # as if its record never got written
    finally:
        _crash(first)
    # while no control plane runs: one instance dies; the orphan runs on
    os.killpg(pids["revive"], signal.SIGKILL)
    assert _alive(pids["orphan"])
    # the test process is the orphan's parent: collect its exit as soon as it comes, as init would
    collector = threading.Thread(target=first.backend._procs[pids["orphan"]].wait, daemon=True)
    collector.start()
    with Plane(tmp_path) as second:  # a fresh store connection, router and backend on the same home
        collector.join(15)  # stopped as recovery ran
        assert not _alive(pids["orphan"])
        assert _serves(second, "keep") == pytest.approx([2.0])
        assert [i["pid"] for i in _instances(second, "keep")] == [pids["keep"]]  # adopted, not restarted
        assert _serves(second, "revive") == pytest.approx([2.0])
        assert [i["pid"] for i in _instances(second, "revive")] != [pids["revive"]]
        assert second.client("sagemaker").describe_endpoint(EndpointName="keep")["EndpointStatus"] == "InService"
    _reap(first)
    assert not list((tmp_path / "instances").glob("*.json"))


def test_recover_never_signals_a_reused_pid(tmp_path: Path) -> None:
    """A recorded pid that now belongs to some other process is forgotten, not killed."""
    from mainsail.backends.base import Instance
    from mainsail.backends.local import LocalBackend
    backend = LocalBackend(tmp_path)
    me = Instance(variant="v", pid=os.getpid(), port=1, log_path="")
    assert not backend.adopt(me)
    backend.stop(me)  # must not signal the test process
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / f"{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(), "port": 1}))
    assert backend.reap(set()) == []
    assert not (tmp_path / "instances" / f"{os.getpid()}.json").exists()
