"""Model, EndpointConfig and tag operations of the hosting API: validate, then write the store."""

from __future__ import annotations

import re
from typing import Any

from mainsail.aws.errors import ValidationException
from mainsail.aws.identity import sagemaker_arn
from mainsail.aws.protocol import Violations
from mainsail.hosting import resources as res
from mainsail.hosting.calls import Call, Operation, get_record, list_summaries, public
from mainsail.hosting.endpoints import ENDPOINT
from mainsail.hosting.store import Record


def create_model(call: Call) -> dict[str, Any]:
    record = res.new_model(call.body, call.region)
    if not call.store.insert(res.MODEL, record["ModelName"], record):
        raise res.already_exists(res.MODEL, record["ModelArn"])
    return {"ModelArn": record["ModelArn"]}


def describe_model(call: Call) -> dict[str, Any]:
    return public(get_record(call, res.MODEL, call.require("ModelName")))


def list_models(call: Call) -> dict[str, Any]:
    return list_summaries(call, res.MODEL, "ModelName", "ModelArn", "Models")


def delete_model(call: Call) -> dict[str, Any]:
    name = call.require("ModelName")
    if not call.store.delete(res.MODEL, name):
        raise res.not_found(res.MODEL, sagemaker_arn(call.region, res.MODEL, name))
    return {}


# -- endpoint configs --------------------------------------------------------------------------


def create_endpoint_config(call: Call) -> dict[str, Any]:
    record = res.new_endpoint_config(call.body, call.region)
    for model_name in res.variant_model_names(record):
        get_record(call, res.MODEL, model_name)
    if not call.store.insert(res.ENDPOINT_CONFIG, record["EndpointConfigName"], record):
        raise res.already_exists(res.ENDPOINT_CONFIG, record["EndpointConfigArn"])
    return {"EndpointConfigArn": record["EndpointConfigArn"]}


def describe_endpoint_config(call: Call) -> dict[str, Any]:
    return public(get_record(call, res.ENDPOINT_CONFIG, call.require("EndpointConfigName")))


def list_endpoint_configs(call: Call) -> dict[str, Any]:
    return list_summaries(call, res.ENDPOINT_CONFIG, "EndpointConfigName", "EndpointConfigArn",
                 "EndpointConfigs")


def delete_endpoint_config(call: Call) -> dict[str, Any]:
    name = call.require("EndpointConfigName")
    if not call.store.delete(res.ENDPOINT_CONFIG, name):
        raise res.not_found(res.ENDPOINT_CONFIG, sagemaker_arn(call.region, res.ENDPOINT_CONFIG, name))
    return {}


# -- tags --------------------------------------------------------------------------------------

_ARN_KEYS = {res.MODEL: ("ModelArn", "ModelName"),
             res.ENDPOINT_CONFIG: ("EndpointConfigArn", "EndpointConfigName"),
             ENDPOINT: ("EndpointArn", "EndpointName"),
             res.TRANSFORM_JOB: ("TransformJobArn", "TransformJobName")}
_RESOURCE_ARN_RE = re.compile(r"arn:aws[a-z-]*:sagemaker:[a-z0-9-]*:[0-9]{12}:(.+)")


def _find_by_arn(call: Call, resource_arn: str) -> tuple[str, str]:
    """The (kind, name) a taggable ARN refers to; ValidationException when there is none."""
    match = _RESOURCE_ARN_RE.fullmatch(resource_arn)
    if match is None:
        v = Violations()
        v.add(resource_arn, "resourceArn", "Member must satisfy regular expression pattern: "
              "arn:aws[a-z-]*:sagemaker:[a-z0-9-]*:[0-9]{12}:.+")
        v.raise_if_any()
    kind = (match.group(1) if match else "").split("/", 1)[0]
    if kind in _ARN_KEYS:
        arn_key, name_key = _ARN_KEYS[kind]
        for record in call.store.list(kind):
            if record[arn_key] == resource_arn:
                return kind, record[name_key]
        raise res.not_found(kind, resource_arn)
    raise ValidationException(f'Could not find resource "{resource_arn}".')


def add_tags(call: Call) -> dict[str, Any]:
    resource_arn = call.require("ResourceArn")
    tags = call.body.get("Tags")
    v = Violations()
    if v.required(tags, "tags"):
        res.validate_tags(v, tags)
    v.raise_if_any()
    kind, name = _find_by_arn(call, resource_arn)
    new_tags: list[dict[str, str]] = list(tags or [])

    def merge(record: Record) -> Record:
        merged = {t["Key"]: t["Value"] for t in record.get("Tags", [])}
        merged.update({t["Key"]: t["Value"] for t in new_tags})
        if len(merged) > 50:
            raise ValidationException("Number of tags exceeds the limit of 50 per resource.")
        record["Tags"] = [{"Key": k, "Value": val} for k, val in merged.items()]
        return record

    if call.store.update(kind, name, merge) is None:
        raise res.not_found(kind, resource_arn)
    return {"Tags": new_tags}


def delete_tags(call: Call) -> dict[str, Any]:
    resource_arn = call.require("ResourceArn")
    keys = call.body.get("TagKeys")
    v = Violations()
    if v.required(keys, "tagKeys"):
        v.length(keys, "tagKeys", minimum=1, maximum=50)
    v.raise_if_any()
    kind, name = _find_by_arn(call, resource_arn)
    doomed = set(keys or [])

    def drop(record: Record) -> Record:
        record["Tags"] = [t for t in record.get("Tags", []) if t["Key"] not in doomed]
        return record

    if call.store.update(kind, name, drop) is None:
        raise res.not_found(kind, resource_arn)
    return {}


def list_tags(call: Call) -> dict[str, Any]:
    resource_arn = call.require("ResourceArn")
    kind, name = _find_by_arn(call, resource_arn)
    record = get_record(call, kind, name)
    return call.paginate(list(record.get("Tags", [])), "Tags", default_max=50, min_max=50, max_max=10**9)


OPERATIONS: dict[str, Operation] = {
    "CreateModel": create_model,
    "DescribeModel": describe_model,
    "ListModels": list_models,
    "DeleteModel": delete_model,
    "CreateEndpointConfig": create_endpoint_config,
    "DescribeEndpointConfig": describe_endpoint_config,
    "ListEndpointConfigs": list_endpoint_configs,
    "DeleteEndpointConfig": delete_endpoint_config,
    "AddTags": add_tags,
    "DeleteTags": delete_tags,
    "ListTags": list_tags,
}
