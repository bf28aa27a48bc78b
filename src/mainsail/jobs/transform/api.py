"""The transform job API: ``CreateTransformJob`` (validated, stored ``InProgress`` for the
:class:`~mainsail.jobs.transform.runner.TransformRunner`), ``DescribeTransformJob``,
``StopTransformJob`` (InProgress -> Stopping) and ``ListTransformJobs``; the job's record and statuses.

``DescribeTransformJob`` returns the job's progress (records and bytes) under an extra
``MainsailProgress`` key that botocore does not parse (the ``mainsail transform`` command reads it
over plain HTTP).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from mainsail.aws.errors import ResourceNotFound, ValidationException
from mainsail.aws.identity import sagemaker_arn
from mainsail.aws.protocol import Violations
from mainsail.hosting import resources as res
from mainsail.hosting.calls import Call
from mainsail.hosting.store import Record
from mainsail.jobs.transform.errors import ResourceInUse
from mainsail.jobs.transform.records import parse_path

TRANSFORM_JOB = res.TRANSFORM_JOB


class TransformJobStatus(StrEnum):
    """A transform job's ``TransformJobStatus`` (the values are the API's strings)."""

    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPING = "Stopping"
    STOPPED = "Stopped"


STATUSES = tuple(TransformJobStatus)
DEFAULT_MAX_PAYLOAD_MB = 6
UNLIMITED_PAYLOAD_MB = 100  # MaxPayloadInMB 0 ("no limit"): SageMaker's own ceiling
_INTERNAL = ("Tags", "Progress", "Instances", "LastModifiedTime")
_S3_URI = re.compile(r"^(https|s3)://([^/]+)/?(.*)")
_LOCAL_URI = re.compile(r"^(file://)?/.*")
_ENV_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,1023}")

#: mainsail's extensions of the service model's domains: local input and output locations
EXTENSIONS = {
    ("CreateTransformJob", "transformInput.dataSource.s3DataSource.s3Uri"): res.local_path,
    ("CreateTransformJob", "transformOutput.s3OutputPath"): res.local_path,
}


# -- validation and records ----------------------------------------------------------------------


def _enum(v: Violations, value: Any, path: str, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        v.add(value, path, "Member must satisfy enum value set: [" + ", ".join(allowed) + "]")


def _struct(v: Violations, value: Any, path: str, *, required: bool = False) -> dict[str, Any]:
    if value is None:
        if required:
            v.required(None, path)
        return {}
    if not isinstance(value, dict):
        v.add(value, path, "Member must be a structure")
        return {}
    return value


def _uri(v: Violations, value: Any, path: str) -> None:
    if not v.required(value, path):
        return
    local = isinstance(value, str) and _LOCAL_URI.match(value) is not None
    v.string(value, path, max_len=1024, pattern=None if local else res.URL_PATTERN[1:],
             regex=_S3_URI)


def validate(body: dict[str, Any]) -> None:
    """Raise ValidationException for a CreateTransformJob request the service would refuse."""
    v = Violations()
    res.validate_name(v, body.get("TransformJobName"), "transformJobName")
    res.validate_name(v, body.get("ModelName"), "modelName", res.MODEL_NAME_PATTERN)
    v.number(body.get("MaxConcurrentTransforms"), "maxConcurrentTransforms", minimum=0)
    v.number(body.get("MaxPayloadInMB"), "maxPayloadInMB", minimum=0)
    _enum(v, body.get("BatchStrategy"), "batchStrategy", ("MultiRecord", "SingleRecord"))
    env = body.get("Environment")
    if env is not None:
        if not isinstance(env, dict) or len(env) > 16:
            v.add("{...}", "environment", "Member must have length less than or equal to 16")
        else:
            for key, value in env.items():
                if not _ENV_KEY.fullmatch(str(key)):
                    v.add(key, "environment", "Map keys must satisfy constraint: "
                          "[Member must satisfy regular expression pattern: [a-zA-Z_][a-zA-Z0-9_]{0,1023}]")
                if not isinstance(value, str) or len(value) > 10240:
                    v.add(value, f"environment.{key}", "Member must have length less than or equal to 10240")
    tin = _struct(v, body.get("TransformInput"), "transformInput", required=True)
    if tin:
        source = _struct(v, _struct(v, tin.get("DataSource"), "transformInput.dataSource",
                                    required=True).get("S3DataSource"),
                         "transformInput.dataSource.s3DataSource", required=True)
        if source:
            path = "transformInput.dataSource.s3DataSource"
            v.required(source.get("S3DataType"), f"{path}.s3DataType")
            _uri(v, source.get("S3Uri"), f"{path}.s3Uri")
        v.string(tin.get("ContentType"), "transformInput.contentType", max_len=256)
        _enum(v, tin.get("CompressionType"), "transformInput.compressionType", ("None", "Gzip"))
        _enum(v, tin.get("SplitType"), "transformInput.splitType", ("None", "Line", "RecordIO", "TFRecord"))
    tout = _struct(v, body.get("TransformOutput"), "transformOutput", required=True)
    if tout:
        _uri(v, tout.get("S3OutputPath"), "transformOutput.s3OutputPath")
        v.string(tout.get("Accept"), "transformOutput.accept", max_len=256)
        _enum(v, tout.get("AssembleWith"), "transformOutput.assembleWith", ("None", "Line"))
    tres = _struct(v, body.get("TransformResources"), "transformResources", required=True)
    if tres:
        itype = tres.get("InstanceType")
        if v.required(itype, "transformResources.instanceType"):
            _enum(v, itype, "transformResources.instanceType", res.INSTANCE_TYPES)
        if v.required(tres.get("InstanceCount"), "transformResources.instanceCount"):
            v.number(tres.get("InstanceCount"), "transformResources.instanceCount", minimum=1)
    processing = _struct(v, body.get("DataProcessing"), "dataProcessing")
    for key in ("InputFilter", "OutputFilter"):
        path = "dataProcessing." + key[:1].lower() + key[1:]
        v.string(processing.get(key), path, max_len=63)
    _enum(v, processing.get("JoinSource"), "dataProcessing.joinSource", ("Input", "None"))
    client_config = _struct(v, body.get("ModelClientConfig"), "modelClientConfig")
    v.number(client_config.get("InvocationsTimeoutInSeconds"),
             "modelClientConfig.invocationsTimeoutInSeconds", minimum=1, maximum=3600)
    v.number(client_config.get("InvocationsMaxRetries"), "modelClientConfig.invocationsMaxRetries",
             minimum=0, maximum=3)
    res.validate_tags(v, body.get("Tags"))
    v.raise_if_any()
    # what the schema lets through but the service (or mainsail) refuses
    split = tin.get("SplitType") or "None"
    if split in ("RecordIO", "TFRecord"):
        raise ValidationException(f"SplitType {split} is not supported by mainsail; use Line or None.")
    if source.get("S3DataType") not in ("ManifestFile", "S3Prefix"):
        raise ValidationException(f"S3DataType {source.get('S3DataType')} is not supported by mainsail; "
                                  "use S3Prefix or ManifestFile.")
    for key in ("InputFilter", "OutputFilter"):
        if processing.get(key):
            try:
                parse_path(processing[key])
            except ValueError as exc:
                raise ValidationException(f"Invalid {key}: {exc}.") from None
    payload = body.get("MaxPayloadInMB")
    concurrency = body.get("MaxConcurrentTransforms")
    if payload is not None and payload > UNLIMITED_PAYLOAD_MB:
        raise ValidationException(f"MaxPayloadInMB must be at most {UNLIMITED_PAYLOAD_MB}.")
    if payload and concurrency and payload * concurrency > UNLIMITED_PAYLOAD_MB:
        raise ValidationException("The value of MaxConcurrentTransforms multiplied by MaxPayloadInMB "
                                  f"must not exceed {UNLIMITED_PAYLOAD_MB} MB.")
    if body.get("BatchStrategy") == "MultiRecord" and split == "None":
        raise ValidationException("BatchStrategy MultiRecord requires SplitType Line.")


def new_job(body: dict[str, Any], region: str) -> Record:
    """The stored record of a valid CreateTransformJob request (the Describe shape plus internals)."""
    name = str(body["TransformJobName"])
    now = time.time()
    tin = dict(body["TransformInput"])
    tin.setdefault("CompressionType", "None")
    tin.setdefault("SplitType", "None")
    tout = dict(body["TransformOutput"])
    tout.setdefault("AssembleWith", "None")
    record: Record = {
        "TransformJobName": name,
        "TransformJobArn": sagemaker_arn(region, TRANSFORM_JOB, name),
        "TransformJobStatus": TransformJobStatus.IN_PROGRESS,
        "ModelName": body["ModelName"],
        "MaxPayloadInMB": int(body.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB)),
        "TransformInput": tin,
        "TransformOutput": tout,
        "TransformResources": dict(body["TransformResources"]),
        "CreationTime": now,
        "LastModifiedTime": now,
    }
    for key in ("MaxConcurrentTransforms", "BatchStrategy", "Environment", "DataProcessing",
                "ModelClientConfig", "DataCaptureConfig", "ExperimentConfig"):
        if body.get(key) is not None:
            record[key] = body[key]
    record["Tags"] = list(body.get("Tags") or [])
    record["Progress"] = {"Records": 0, "Requests": 0, "BytesRead": 0, "InputBytes": 0,
                          "Objects": 0, "ObjectsDone": 0}
    return record


# -- operations ----------------------------------------------------------------------------------


def _name(call: Call) -> str:
    v = Violations()
    res.validate_name(v, call.body.get("TransformJobName"), "transformJobName")
    v.raise_if_any()
    return str(call.body["TransformJobName"])


def create_transform_job(call: Call) -> dict[str, Any]:
    validate(call.body)
    model_name = str(call.body["ModelName"])
    if call.store.get(res.MODEL, model_name) is None:
        raise ValidationException(f'Could not find model "{sagemaker_arn(call.region, res.MODEL, model_name)}".')
    record = new_job(call.body, call.region)
    if not call.store.insert(TRANSFORM_JOB, record["TransformJobName"], record):
        raise ResourceInUse(f"Job name must be unique within an AWS account and region, and a job "
                            f"with this name already exists ({record['TransformJobArn']})")
    return {"TransformJobArn": record["TransformJobArn"]}


def describe_transform_job(call: Call) -> dict[str, Any]:
    name = _name(call)
    record = call.store.get(TRANSFORM_JOB, name)
    if record is None:
        raise ResourceNotFound(f"Could not find requested job with name {name}")
    out = {k: v for k, v in record.items() if k not in _INTERNAL}
    out["MainsailProgress"] = record.get("Progress", {})  # not in the shape: botocore drops it
    return out


def stop_transform_job(call: Call) -> dict[str, Any]:
    name = _name(call)

    def stopping(current: Record) -> Record:
        if current["TransformJobStatus"] == TransformJobStatus.IN_PROGRESS:
            current["TransformJobStatus"] = TransformJobStatus.STOPPING
            current["LastModifiedTime"] = time.time()
        return current

    if call.store.update(TRANSFORM_JOB, name, stopping) is None:
        raise ResourceNotFound(f"Could not find job to update with name {name}")
    return {}


def list_transform_jobs(call: Call) -> dict[str, Any]:
    body = call.body
    v = Violations()
    sort_by = body.get("SortBy", "CreationTime")
    sort_order = body.get("SortOrder", "Descending")
    _enum(v, sort_by, "sortBy", ("Name", "CreationTime", "Status"))
    _enum(v, sort_order, "sortOrder", ("Ascending", "Descending"))
    _enum(v, body.get("StatusEquals"), "statusEquals", STATUSES)
    v.string(body.get("NameContains"), "nameContains", max_len=63, pattern="[a-zA-Z0-9\\-]+")
    v.raise_if_any()
    records = call.store.list(TRANSFORM_JOB)
    if body.get("NameContains"):
        needle = str(body["NameContains"]).lower()
        records = [r for r in records if needle in r["TransformJobName"].lower()]
    if body.get("StatusEquals"):
        records = [r for r in records if r["TransformJobStatus"] == body["StatusEquals"]]
    for key, field_name, newer in (("CreationTimeAfter", "CreationTime", True),
                                   ("CreationTimeBefore", "CreationTime", False),
                                   ("LastModifiedTimeAfter", "LastModifiedTime", True),
                                   ("LastModifiedTimeBefore", "LastModifiedTime", False)):
        if body.get(key) is not None:
            limit = float(body[key])
            records = [r for r in records
                       if (float(r.get(field_name) or r["CreationTime"]) > limit) == newer
                       and float(r.get(field_name) or r["CreationTime"]) != limit]
    field_key = {"Name": "TransformJobName", "CreationTime": "CreationTime",
                 "Status": "TransformJobStatus"}[sort_by]
    records.sort(key=lambda r: (r[field_key], r["TransformJobName"]), reverse=sort_order == "Descending")
    summaries = []
    for r in records:
        summary = {"TransformJobName": r["TransformJobName"], "TransformJobArn": r["TransformJobArn"],
                   "CreationTime": r["CreationTime"], "TransformJobStatus": r["TransformJobStatus"],
                   "LastModifiedTime": r.get("LastModifiedTime", r["CreationTime"])}
        for key in ("TransformEndTime", "FailureReason"):
            if r.get(key) is not None:
                summary[key] = r[key]
        summaries.append(summary)
    return call.paginate(summaries, "TransformJobSummaries", default_max=10)


OPERATIONS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "CreateTransformJob": create_transform_job,
    "DescribeTransformJob": describe_transform_job,
    "ListTransformJobs": list_transform_jobs,
    "StopTransformJob": stop_transform_job,
}

