"""Which GPU a worker serves on: ``context.system_properties["gpu_id"]`` and the default device.

TorchServe-based containers give each worker a GPU index (workers spread over the visible GPUs round
robin) and pass it to the script's context; scripts do ``torch.device("cuda:" + str(gpu_id))``. mainsail
does the same from ``MAINSAIL_DEVICE``: ``cpu`` → None; ``cuda:N`` → N for every worker; ``auto`` (the
default) or ``cuda`` → worker slot modulo the number of visible GPUs, None where there are none.

Counting GPUs does not import torch (a script that never uses it should not pay for it): torch's own
count when torch is already imported, else the NVIDIA driver's ``/proc/driver/nvidia/gpus``, narrowed
by ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_worker_gpu: int | None = None


def visible_gpus() -> int:
    """How many GPUs this process may use."""
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch.version, "cuda", None):
        return int(torch.cuda.device_count())
    try:
        present = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    count = 0
    for entry in visible.split(","):  # CUDA stops at the first invalid entry ("-1" hides them all)
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        count += 1
    return min(count, present)


def gpu_for(device: str, slot: int, count: int | None = None) -> int | None:
    """The GPU index of worker ``slot`` under ``MAINSAIL_DEVICE=device`` (None: it serves on CPU)."""
    device = device.strip().lower()
    if device.startswith("cuda:"):
        return int(device.split(":", 1)[1])
    if device not in ("auto", "cuda"):
        return None
    count = visible_gpus() if count is None else count
    return slot % count if count > 0 else None


def set_worker_gpu(gpu: int | None) -> None:
    """Said once by the worker process, before its model loads."""
    global _worker_gpu
    _worker_gpu = gpu


def worker_gpu() -> int | None:
    """This worker's GPU index, None on CPU."""
    return _worker_gpu


def torch_device(torch: Any) -> Any:
    """The device the framework defaults put a PyTorch model and its inputs on: this worker's GPU, else
    ``cuda`` when one is available, else CPU (the PyTorch container's ``default_model_fn`` rule)."""
    cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return torch.device("cpu")
    gpu = worker_gpu()
    return torch.device("cuda" if gpu is None else f"cuda:{gpu}")
