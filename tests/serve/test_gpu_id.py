"""``context.system_properties["gpu_id"]``: the worker's GPU index, workers spread over the visible GPUs
round robin, None on CPU (as in TorchServe-based containers); ``MAINSAIL_DEVICE`` decides.

This machine has no GPU: the spreading is checked on :func:`gpu_for` with a GPU count given, and through
the server with ``MAINSAIL_DEVICE=cuda:N`` (the script only reads the index, it does not touch CUDA)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest

from mainsail.handlers.gpus import gpu_for, visible_gpus
from tests.conftest import ServerProcess, write_script

SCRIPT = """
import os

def model_fn(model_dir, context):
    return {"loaded on": context.system_properties["gpu_id"]}

def transform_fn(model, body, content_type, accept, context):
    return {"pid": os.getpid(), "model_fn gpu_id": model["loaded on"],
            "gpu_id": context.system_properties["gpu_id"]}, accept
"""


def test_workers_spread_over_the_visible_gpus() -> None:
    assert [gpu_for("auto", slot, count=2) for slot in range(5)] == [0, 1, 0, 1, 0]
    assert [gpu_for("cuda", slot, count=3) for slot in range(4)] == [0, 1, 2, 0]
    assert [gpu_for("cuda:1", slot, count=4) for slot in range(3)] == [1, 1, 1]
    assert gpu_for("auto", 0, count=0) is None and gpu_for("cpu", 1, count=2) is None
    assert gpu_for("CUDA:2 ", 0) == 2


@pytest.mark.skipif(visible_gpus() > 0, reason="this checks the CPU answer")
def test_on_cpu_gpu_id_is_none(tmp_path: Path, home: Path) -> None:
    write_script(tmp_path, textwrap.dedent(SCRIPT))
    with ServerProcess([str(tmp_path), "--workers", "2"], home=home) as server:
        answer = httpx.post(server.url + "/invocations", content=b"{}", headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    assert answer.json()["gpu_id"] is None and answer.json()["model_fn gpu_id"] is None


def test_a_device_named_by_index_is_every_workers_gpu_id(tmp_path: Path, home: Path) -> None:
    write_script(tmp_path, textwrap.dedent(SCRIPT))
    with ServerProcess([str(tmp_path), "--workers", "2"], home=home, env={"MAINSAIL_DEVICE": "cuda:1"}) as server:
        answers = [httpx.post(server.url + "/invocations", content=b"{}",
                              headers={"Content-Type": "application/json"}).json() for _ in range(6)]
        log = server.log()
    assert {(a["gpu_id"], a["model_fn gpu_id"]) for a in answers} == {(1, 1)}
    assert "not preloading the model: each worker loads its own copy on its GPU" in log
