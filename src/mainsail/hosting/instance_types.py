"""What an instance type gives an instance: its vCPUs, hence the model-server workers it runs.

SageMaker's framework containers start one model-server worker per vCPU of the instance
(``SAGEMAKER_MODEL_SERVER_WORKERS`` in the model's ``Environment`` sets the count instead), so an
``ml.m5.large`` answers with 2 processes and an ``ml.c5.9xlarge`` with 36. :func:`vcpus` reads the
count from the type's size, as EC2 names them (``medium`` 1, ``large`` 2, ``xlarge`` 4,
``<N>xlarge`` 4·N), with the few types that break that rule listed in :data:`VCPU_EXCEPTIONS`.
:func:`model_server_workers` is the decision for one instance; the backend fits it to its host
(the local backend: at most ``MAINSAIL_UP_MAX_INSTANCE_WORKERS``, by default the host's cores).

:func:`memory_bytes` is the type's memory, the 100 % of the ``MemoryUtilization`` metric: the family's
GiB per vCPU (:data:`GIB_PER_VCPU`) times :func:`vcpus`, or :data:`MEMORY_GIB` for the types that break
their family's ratio, from AWS's published EC2 specifications. A family in neither table (ml.g7*,
ml.p6*) gives ``None``: that metric is then left out, not guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: The model's Environment variable that sets the worker count (read by ``mainsail serve`` itself).
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"

#: Types whose vCPUs are not what their size says, from AWS's published EC2 specifications.
#: Checked against the rule, every other type in ``resources.INSTANCE_TYPES`` follows it, as
#: published (e.g. ml.m4.10xlarge 40, ml.c5.9xlarge 36, ml.c5.18xlarge 72, ml.p2.8xlarge 32,
#: ml.p2.16xlarge 64, ml.p3.16xlarge 64, ml.g4dn.12xlarge 48, ml.inf1.6xlarge 24, ml.p5.4xlarge 16,
#: ml.p6e-gb200.36xlarge 144, the Graviton ``medium`` sizes 1). Not verified against a published
#: table (too recent), so the rule is assumed: ml.g7e.*, ml.g7.* and ml.p6-b300.48xlarge.
VCPU_EXCEPTIONS: Mapping[str, int] = {
    "ml.t2.medium": 2,  # burstable: 2 vCPUs, where every other medium has 1
    "ml.c4.8xlarge": 36,  # Haswell: 36, not 32
}

_SIZE = re.compile(r"^ml\.[a-z0-9-]+\.(?:(?P<n>\d*)xlarge|(?P<large>large)|(?P<medium>medium))$")

#: Workers of an instance whose type says nothing: a serverless variant, or an endpoint recorded
#: before instance types were kept (which ran one).
DEFAULT_WORKERS = 1


def vcpus(instance_type: str) -> int | None:
    """The vCPUs of a SageMaker instance type (``ml.m5.large`` → 2); ``None`` for a name without
    an EC2 size."""
    if instance_type in VCPU_EXCEPTIONS:
        return VCPU_EXCEPTIONS[instance_type]
    match = _SIZE.match(instance_type)
    if match is None:
        return None
    if match["medium"]:
        return 1
    if match["large"]:
        return 2
    return 4 * int(match["n"] or 1)


#: GiB of memory per vCPU, for the families whose every size has the same ratio
GIB_PER_VCPU: Mapping[str, float] = {
    **dict.fromkeys(("m4", "m5", "m5d", "m6g", "m6gd", "m6i", "m7i", "m8g", "g4dn", "g5", "g6", "inf2", "trn1",
                     "trn1n"), 4.0),
    **dict.fromkeys(("c5", "c5d", "c6g", "c6gd", "c6gn", "c6i", "c6in", "c7g", "c7i", "c8g", "inf1"), 2.0),
    **dict.fromkeys(("r5", "r5d", "r6g", "r6gd", "r6i", "r7gd", "r7i", "r8g", "g6e"), 8.0),
    "p3": 7.625,  # ml.p3.2xlarge: 8 vCPUs, 61 GiB
}
#: GiB of memory of the types whose family has no one ratio
MEMORY_GIB: Mapping[str, float] = {
    "ml.t2.medium": 4, "ml.t2.large": 8, "ml.t2.xlarge": 16, "ml.t2.2xlarge": 32,
    "ml.c4.large": 3.75, "ml.c4.xlarge": 7.5, "ml.c4.2xlarge": 15, "ml.c4.4xlarge": 30, "ml.c4.8xlarge": 60,
    "ml.p2.xlarge": 61, "ml.p2.8xlarge": 488, "ml.p2.16xlarge": 732,
    "ml.p4d.24xlarge": 1152, "ml.p4de.24xlarge": 1152, "ml.p5.4xlarge": 256, "ml.p5.48xlarge": 2048,
    "ml.p5e.48xlarge": 2048, "ml.p5en.48xlarge": 2048, "ml.dl1.24xlarge": 768, "ml.trn2.48xlarge": 2048,
}


def memory_bytes(instance_type: str) -> int | None:
    """The memory of a SageMaker instance type in bytes (``ml.m5.large`` → 8 GiB); ``None`` for a type
    neither table knows."""
    if instance_type in MEMORY_GIB:
        return int(MEMORY_GIB[instance_type] * 2**30)
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    ratio, cores = GIB_PER_VCPU.get(family), vcpus(instance_type)
    return int(ratio * cores * 2**30) if ratio is not None and cores is not None else None


def model_server_workers(instance_type: str | None, environment: Mapping[str, str], *,
                         multi_model: bool = False) -> int | None:
    """How many model-server workers SageMaker's container would run on one instance.

    ``None`` when the model's ``environment`` sets ``SAGEMAKER_MODEL_SERVER_WORKERS``: the instance
    reads it itself, and nothing caps it. Otherwise one for a multi-model instance (each worker
    would keep its own loaded models, and the router loads a target model on the one it reaches)
    and for a serverless variant (``instance_type`` ``None``: AWS assigns compute "proportional to
    the memory" without saying how much, and the memory watchdog counts every process), else the
    type's vCPUs (one for a name this table does not know)."""
    if environment.get(WORKERS_ENV, "").strip():
        return None
    if multi_model or instance_type is None:
        return DEFAULT_WORKERS
    return vcpus(instance_type) or DEFAULT_WORKERS
