"""Endpoint operations: Create/Describe/List/Update/UpdateEndpointWeightsAndCapacities/DeleteEndpoint.

Operations only write desired state to the store; the ``Reconciler`` makes it so. An endpoint record
is the DescribeEndpoint shape plus internal keys (``INTERNAL_KEYS``): the reconciler owns
``Instances`` (the serving set), ``PendingInstances`` (an update's new set) and ``Draining`` (old
instances finishing their requests); the API owns ``Pending`` (what an update asked for).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from mainsail.aws.errors import ValidationException
from mainsail.aws.identity import sagemaker_arn
from mainsail.aws.protocol import Violations
from mainsail.hosting import resources as res
from mainsail.hosting.calls import Call, list_summaries
from mainsail.hosting.store import Record, StateStore

ENDPOINT = "endpoint"


class EndpointStatus(StrEnum):
    """An endpoint's ``EndpointStatus``; the values are SageMaker's, as stored and answered."""

    CREATING = "Creating"
    IN_SERVICE = "InService"
    UPDATING = "Updating"
    FAILED = "Failed"
    DELETING = "Deleting"


#: Statuses DescribeEndpoint waits on (briefly) so that a client's first poll sees where it settles.
SETTLING = (EndpointStatus.CREATING, EndpointStatus.UPDATING, EndpointStatus.DELETING)
INTERNAL_KEYS = ("Tags", "Instances", "PendingInstances", "Draining", "Pending", "Specs", "PendingSpecs",
                 "PendingConfig")
RETAINABLE = ("DesiredInstanceCount", "DesiredWeight", "DataCaptureConfig")
#: ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` of an async endpoint's instances (set by the reconciler): the
#: largest async payload, ``mainsail.jobs.async_payloads.MAX_ASYNC_PAYLOAD`` (1 GiB), in MB.
ASYNC_INSTANCE_MAX_PAYLOAD_MB = 1024


def endpoint_arn(region: str, name: str) -> str:
    return sagemaker_arn(region, ENDPOINT, name)


def not_found(resource_arn: str) -> ValidationException:
    return ValidationException(f'Could not find endpoint "{resource_arn}".')


def public(record: Record) -> dict[str, Any]:
    """The DescribeEndpoint shape of a stored record."""
    return {k: v for k, v in record.items() if k not in INTERNAL_KEYS}


def _name(call: Call) -> str:
    value = call.body.get("EndpointName")
    v = Violations()
    if v.required(value, "endpointName"):
        res.validate_name(v, value, "endpointName")
    v.raise_if_any()
    return str(value)


def _config(call: Call, member: str = "EndpointConfigName") -> Record:
    config_name = call.body.get(member)
    v = Violations()
    if v.required(config_name, "endpointConfigName"):
        res.validate_name(v, config_name, "endpointConfigName")
    v.raise_if_any()
    config = call.store.get(res.ENDPOINT_CONFIG, str(config_name))
    if config is None:
        raise res.not_found(res.ENDPOINT_CONFIG,
                            sagemaker_arn(call.region, res.ENDPOINT_CONFIG, str(config_name)))
    return config


def _deployed_images(store: StateStore, model_name: str | None, now: float) -> list[dict[str, Any]]:
    model = store.get(res.MODEL, model_name) if model_name else None
    if model is None:
        return []
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    image = container.get("Image")
    return [{"SpecifiedImage": image, "ResolvedImage": image, "ResolutionTime": now}] if image else []


def variant_summaries(store: StateStore, config: Record, now: float) -> list[dict[str, Any]]:
    """The DescribeEndpoint ``ProductionVariants`` of a config, before any instance runs."""
    summaries = []
    for pv in config.get("ProductionVariants", []):
        weight = float(pv.get("InitialVariantWeight", 1.0))
        summary: dict[str, Any] = {"VariantName": pv["VariantName"]}
        images = _deployed_images(store, pv.get("ModelName"), now)
        if images:
            summary["DeployedImages"] = images
        summary.update({"CurrentWeight": weight, "DesiredWeight": weight, "CurrentInstanceCount": 0,
                        "DesiredInstanceCount": desired_count(pv)})
        if pv.get("ServerlessConfig"):
            summary["CurrentServerlessConfig"] = pv["ServerlessConfig"]
            summary["DesiredServerlessConfig"] = pv["ServerlessConfig"]
        if pv.get("RoutingConfig"):
            summary["RoutingConfig"] = pv["RoutingConfig"]
        summaries.append(summary)
    return summaries


def desired_count(pv: dict[str, Any]) -> int:
    """Instances a config variant asks for (a serverless variant runs one, for now)."""
    return int(pv.get("InitialInstanceCount") or 1)


def create_endpoint(call: Call) -> dict[str, Any]:
    name = _name(call)
    config = _config(call)
    v = Violations()
    tags = call.body.get("Tags")
    if tags is not None:
        res.validate_tags(v, tags)
    v.raise_if_any()
    now = time.time()
    arn = endpoint_arn(call.region, name)
    record: Record = {"EndpointName": name, "EndpointArn": arn,
                      "EndpointConfigName": config["EndpointConfigName"],
                      "ProductionVariants": variant_summaries(call.store, config, now),
                      "EndpointStatus": EndpointStatus.CREATING, "CreationTime": now, "LastModifiedTime": now,
                      "Tags": list(tags or []), "Instances": []}
    for key in ("DataCaptureConfig", "AsyncInferenceConfig"):
        if config.get(key):
            record[key] = config[key]
    if call.body.get("DeploymentConfig"):
        record["LastDeploymentConfig"] = call.body["DeploymentConfig"]
    if not call.store.insert(ENDPOINT, name, record):
        raise ValidationException(f'Cannot create already existing endpoint "{arn}".')
    return {"EndpointArn": arn}


def describe_endpoint(call: Call) -> dict[str, Any]:
    """DescribeEndpoint now; :func:`mainsail.hosting.api.settle` re-asks for a while as it settles."""
    name = _name(call)
    record = call.store.get(ENDPOINT, name)
    if record is None:
        raise not_found(endpoint_arn(call.region, name))
    return public(record)


def list_endpoints(call: Call) -> dict[str, Any]:
    return list_summaries(call, ENDPOINT, "EndpointName", "EndpointArn", "Endpoints", status_key="EndpointStatus",
                          extra=("EndpointStatus", "LastModifiedTime"))


def _updatable(call: Call, name: str) -> Record:
    record = call.store.get(ENDPOINT, name)
    if record is None:
        raise not_found(endpoint_arn(call.region, name))
    if record["EndpointStatus"] != EndpointStatus.IN_SERVICE:
        raise ValidationException(
            f'Cannot update in-progress endpoint "{endpoint_arn(call.region, name)}".'
            if record["EndpointStatus"] in SETTLING else
            f'Cannot update endpoint "{endpoint_arn(call.region, name)}" in status '
            f'{record["EndpointStatus"]}.')
    return record


def _start_update(call: Call, name: str, pending: dict[str, Any]) -> dict[str, Any]:
    arn = endpoint_arn(call.region, name)

    def mark(record: Record) -> Record:
        if record["EndpointStatus"] != EndpointStatus.IN_SERVICE:  # raced with another writer
            raise ValidationException(f'Cannot update in-progress endpoint "{arn}".')
        record["EndpointStatus"] = EndpointStatus.UPDATING
        record["Pending"] = pending
        record["PendingInstances"] = []
        record.pop("FailureReason", None)
        record["LastModifiedTime"] = time.time()
        if pending["Kind"] == "config":
            record["PendingDeploymentSummary"] = {
                "EndpointConfigName": pending["EndpointConfigName"],
                "ProductionVariants": [
                    {k: v for k, v in pv.items() if k != "RoutingConfig"} for pv in pending["Variants"]],
                "StartTime": record["LastModifiedTime"]}
        return record

    if call.store.update(ENDPOINT, name, mark) is None:
        raise not_found(arn)
    return {"EndpointArn": arn}


def update_endpoint(call: Call) -> dict[str, Any]:
    """Blue/green: the new config's instances start; traffic moves once all answer; old ones drain."""
    name = _name(call)
    config = _config(call)
    record = _updatable(call, name)
    excluded = set()
    for item in call.body.get("ExcludeRetainedVariantProperties") or []:
        kind = item.get("VariantPropertyType") if isinstance(item, dict) else None
        if kind not in RETAINABLE:
            raise ValidationException(
                f"1 validation error detected: Value '{kind}' at 'excludeRetainedVariantProperties' "
                f"failed to satisfy constraint: Member must satisfy enum value set: {list(RETAINABLE)}")
        excluded.add(kind)
    retain = bool(call.body.get("RetainAllVariantProperties"))
    current = {pv["VariantName"]: pv for pv in record["ProductionVariants"]}
    variants = variant_summaries(call.store, config, time.time())
    if retain:
        for summary in variants:
            old = current.get(summary["VariantName"])
            if old is None:
                continue
            if "DesiredWeight" not in excluded:
                summary["CurrentWeight"] = summary["DesiredWeight"] = old["CurrentWeight"]
            if "DesiredInstanceCount" not in excluded:
                summary["DesiredInstanceCount"] = old["DesiredInstanceCount"]
    pending = {"Kind": "config", "EndpointConfigName": config["EndpointConfigName"], "Variants": variants}
    if call.body.get("DeploymentConfig"):
        pending["DeploymentConfig"] = call.body["DeploymentConfig"]
    return _start_update(call, name, pending)


def update_endpoint_weights_and_capacities(call: Call) -> dict[str, Any]:
    name = _name(call)
    desired = call.body.get("DesiredWeightsAndCapacities")
    v = Violations()
    if v.required(desired, "desiredWeightsAndCapacities"):
        v.length(desired, "desiredWeightsAndCapacities", minimum=1, maximum=10)
        for i, item in enumerate(desired if isinstance(desired, list) else [], start=1):
            path = f"desiredWeightsAndCapacities.{i}.member"
            if not isinstance(item, dict):
                v.add(item, path, "Member must be a structure")
                continue
            if v.required(item.get("VariantName"), f"{path}.variantName"):
                res.validate_name(v, item["VariantName"], f"{path}.variantName")
            v.number(item.get("DesiredWeight"), f"{path}.desiredWeight", minimum=0)
            v.number(item.get("DesiredInstanceCount"), f"{path}.desiredInstanceCount", minimum=0)
    v.raise_if_any()
    assert isinstance(desired, list)
    names = [item["VariantName"] for item in desired]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # one entry per variant: SageMaker does not let the last of two win
        raise ValidationException(f"The variant name(s) [{', '.join(repeated)}] must be unique in "
                                  "DesiredWeightsAndCapacities.")
    record = _updatable(call, name)
    by_name = {pv["VariantName"]: dict(pv) for pv in record["ProductionVariants"]}
    missing = [item["VariantName"] for item in desired if item["VariantName"] not in by_name]
    if missing:
        raise ValidationException(
            f"The variant(s) [{', '.join(missing)}] is/are not present in endpoint "
            f'"{endpoint_arn(call.region, name)}".')
    for item in desired:
        count = item.get("DesiredInstanceCount")
        if count is not None and int(count) < 1:
            raise ValidationException(
                f"DesiredInstanceCount for variant {item['VariantName']} must be at least 1.")
    for item in desired:
        summary = by_name[item["VariantName"]]
        if item.get("DesiredWeight") is not None:
            summary["DesiredWeight"] = float(item["DesiredWeight"])
        if item.get("DesiredInstanceCount") is not None:
            summary["DesiredInstanceCount"] = int(item["DesiredInstanceCount"])
    pending = {"Kind": "capacity", "EndpointConfigName": record["EndpointConfigName"],
               "Variants": list(by_name.values())}

    out = _start_update(call, name, pending)

    def show_desired(current: Record) -> Record:  # Describe shows DesiredWeight/Count at once
        if current.get("Pending") is pending or current.get("Pending") == pending:
            current["ProductionVariants"] = [
                {**pv, "DesiredWeight": by_name[pv["VariantName"]]["DesiredWeight"],
                 "DesiredInstanceCount": by_name[pv["VariantName"]]["DesiredInstanceCount"]}
                for pv in current["ProductionVariants"]]
        return current

    call.store.update(ENDPOINT, name, show_desired)
    return out


def delete_endpoint(call: Call) -> dict[str, Any]:
    name = _name(call)

    def mark(record: Record) -> Record:
        record["EndpointStatus"] = EndpointStatus.DELETING
        record["LastModifiedTime"] = time.time()
        return record

    if call.store.update(ENDPOINT, name, mark) is None:
        raise not_found(endpoint_arn(call.region, name))
    return {}


OPERATIONS = {
    "CreateEndpoint": create_endpoint,
    "DescribeEndpoint": describe_endpoint,
    "ListEndpoints": list_endpoints,
    "UpdateEndpoint": update_endpoint,
    "UpdateEndpointWeightsAndCapacities": update_endpoint_weights_and_capacities,
    "DeleteEndpoint": delete_endpoint,
}
