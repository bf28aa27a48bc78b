"""What a variant's instances run: the ``Specs`` of an endpoint config, and starting one instance.

A spec is taken from the config and its models once (``snapshot``) and kept on the endpoint record,
so that a model or config deleted later does not stop a running endpoint from replacing an instance,
as on SageMaker. Shared by the reconciler (create, replace, scale) and rollouts (an update's new set).
"""

from __future__ import annotations

from typing import Any

from mainsail.backends.base import Backend, InstanceSpec, ModelSourceError
from mainsail.backends.model_sources import container_model_source, multi_model_prefix
from mainsail.hosting import resources as res
from mainsail.hosting.endpoints import ASYNC_INSTANCE_MAX_PAYLOAD_MB
from mainsail.hosting.instance_types import model_server_workers
from mainsail.hosting.store import Record, StateStore

#: Seconds an instance may take to answer /ping (a variant's ContainerStartupHealthCheckTimeoutInSeconds).
DEFAULT_STARTUP_TIMEOUT = 600.0
Specs = dict[str, dict[str, Any]]  # variant -> {"model_data_url", "environment", "instance_type", ...}


def snapshot(store: StateStore, config_name: str) -> tuple[Record, Specs]:
    """The config and, per variant, what its instances run (kept, so a deleted model or config
    does not stop a running endpoint from replacing an instance, as on SageMaker)."""
    config = store.get(res.ENDPOINT_CONFIG, config_name)
    if config is None:
        raise ModelSourceError(f"Endpoint configuration {config_name} no longer exists.")
    specs: Specs = {}
    for pv in config.get("ProductionVariants", []):
        model = store.get(res.MODEL, pv["ModelName"])
        if model is None:
            raise ModelSourceError(f"Model {pv['ModelName']} no longer exists.")
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        url = container_model_source(container)
        if not url:
            raise ModelSourceError(f"Model {pv['ModelName']} has no ModelDataUrl or ModelDataSource.")
        env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
        if config.get("AsyncInferenceConfig"):  # its instances take async payloads (up to 1 GB)
            env.setdefault("SAGEMAKER_MAX_PAYLOAD_IN_MB", str(ASYNC_INSTANCE_MAX_PAYLOAD_MB))
            # and may run up to InvocationTimeoutSeconds' maximum; each request's own limit is
            # enforced by the control plane, so the instance's 60 s default must not cut it first
            env.setdefault("SAGEMAKER_MODEL_SERVER_TIMEOUT", "3600")
        specs[pv["VariantName"]] = {
            "model_data_url": url, "environment": env, "instance_type": pv.get("InstanceType"),
            "startup_timeout": float(pv.get("ContainerStartupHealthCheckTimeoutInSeconds")
                                     or DEFAULT_STARTUP_TIMEOUT)}
    return config, specs


def startup_timeout(specs: Specs, variant: str) -> float:
    """Seconds an instance of ``variant`` may take to answer /ping."""
    return float(specs.get(variant, {}).get("startup_timeout", DEFAULT_STARTUP_TIMEOUT))


def start_instance(backend: Backend, name: str, specs: Specs, variant: str, index: int, *,
                   now: float) -> dict[str, Any]:
    """Start instance ``index`` of ``variant`` of endpoint ``name`` at ``now`` (``time.time()``, or the
    reconciler's clock), running the workers its instance type gives it; its record entry (not
    ready yet)."""
    spec = specs[variant]
    url, env = spec["model_data_url"], dict(spec["environment"])
    # specs recorded before instance types were kept have none: one worker, as they ran
    workers = model_server_workers(spec.get("instance_type"), env,
                                   multi_model=multi_model_prefix(url, env) is not None)
    instance = backend.start(InstanceSpec(endpoint=name, variant=variant, index=index, model_data_url=url,
                                          environment=env, workers=workers))
    return {**instance.to_record(), "index": index, "ready": False, "started": now}
