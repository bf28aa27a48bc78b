"""How many worker processes an endpoint's instance runs: the local backend's cap, the setting, and a
real ``mainsail up`` whose instances are counted in ``/proc``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mainsail.backends.local import LocalBackend, workers_option
from mainsail.settings import ControlSettings
from tests.control.helpers import IMAGE, INFERENCE_OK, ROLE, WAIT, UpProcess, make_model_dir

CORES = os.cpu_count() or 1


def test_the_asked_workers_are_capped_at_the_hosts_cores() -> None:
    assert workers_option(2 * CORES + 1) == ["--workers", str(CORES)]
    assert workers_option(1) == ["--workers", "1"]


def test_the_cap_setting_replaces_the_cores() -> None:
    assert workers_option(72, 3) == ["--workers", "3"]
    assert workers_option(2, 8) == ["--workers", "2"]  # a cap, never a floor
    assert workers_option(CORES + 5, CORES + 5) == ["--workers", str(CORES + 5)]


def test_the_models_own_variable_is_neither_passed_nor_capped() -> None:
    assert workers_option(None) == []
    assert workers_option(None, 1) == []


def test_max_instance_workers_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ControlSettings(home=tmp_path).max_instance_workers is None
    monkeypatch.setenv("MAINSAIL_UP_MAX_INSTANCE_WORKERS", "3")
    assert ControlSettings(home=tmp_path).max_instance_workers == 3
    monkeypatch.setenv("MAINSAIL_UP_MAX_INSTANCE_WORKERS", " ")
    assert ControlSettings(home=tmp_path).max_instance_workers is None
    monkeypatch.setenv("MAINSAIL_UP_MAX_INSTANCE_WORKERS", "0")
    with pytest.raises(ValidationError):
        ControlSettings(home=tmp_path)
    with pytest.raises(ValueError, match="max_workers must be at least 1"):
        LocalBackend(tmp_path, max_workers=0)


def test_up_takes_the_cap_as_an_option_too(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mainsail.cli.app import app

    result = CliRunner().invoke(app, ["up", "--home", str(tmp_path), "--max-instance-workers", "0"])
    assert result.exit_code == 2 and "max_instance_workers" in result.stderr
    assert "--max-instance-workers" in CliRunner().invoke(app, ["up", "--help"]).stdout


def _worker_processes(pid: int) -> int:
    """The children of ``pid`` that serve (multiprocessing's resource tracker aside), from /proc."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        if ppid == pid and b"resource_tracker" not in cmdline:
            count += 1
    return count


def _instance_pids(home: Path) -> set[int]:
    return {int(json.loads(p.read_text())["pid"]) for p in (home / "instances").glob("*.json")}


@pytest.mark.skipif(not sys.platform.startswith("linux") or CORES < 2, reason="counts workers in /proc; 2+ cores")
def test_an_instance_runs_one_worker_per_vcpu_unless_the_model_says(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = UpProcess(home, env={"MAINSAIL_UP_MAX_INSTANCE_WORKERS": ""})  # blank: the host's cores
    try:
        sm, rt = up.client("sagemaker"), up.client("sagemaker-runtime")
        model_dir = make_model_dir(tmp_path / "model", INFERENCE_OK)
        counts = {}
        for name, env in [("two", {}), ("one", {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})]:
            before = _instance_pids(home) if (home / "instances").is_dir() else set()
            sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
                "Image": IMAGE, "ModelDataUrl": f"file://{model_dir}", "Environment": env})
            sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
                {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                 "InstanceType": "ml.m5.large"}])
            sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
            out = rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=b"1,1\n")
            assert json.loads(out["Body"].read()) == pytest.approx([5.0])
            (pid,) = _instance_pids(home) - before
            counts[name] = _worker_processes(pid)
        assert counts == {"two": 2, "one": 1}, up.log_text()
    finally:
        assert up.stop() == 0
