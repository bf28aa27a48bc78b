"""Batch transform: ``CreateTransformJob`` & co., and the ``TransformRunner`` that runs the jobs.

A job is a record of kind ``transform-job`` in the state store. ``CreateTransformJob`` validates
the request and stores it ``InProgress``; the runner (a thread of ``mainsail up``) picks it up:

1. starts ``TransformResources.InstanceCount`` instances of the model through the ``Backend`` (the
   model's container environment, the job's ``Environment`` and the batch variables SageMaker sets:
   ``SAGEMAKER_BATCH``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``, ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``,
   ``SAGEMAKER_BATCH_STRATEGY``) and waits for ``/ping``;
2. streams every input object (``s3://`` from mainsail's own S3 store, or from real S3 with boto3
   when ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` is set, as :mod:`modeldata` does; or a local
   ``file://`` file or folder) record by record: ``SplitType`` Line splits on newlines, None sends the
   whole object; Gzip input is decompressed as it streams; ``BatchStrategy`` MultiRecord packs
   records into requests of at most ``MaxPayloadInMB`` (default 6), SingleRecord sends one each;
   ``MaxConcurrentTransforms`` (default 1) requests per instance are in flight at once, spread
   round-robin over the instances and over as many input objects as there are such slots (each
   object streamed, its answers written in order; a slot is held until its answer is written, so
   memory stays bounded by the slots);
3. applies ``DataProcessing`` (``InputFilter``, ``JoinSource`` Input, ``OutputFilter``: a JSONPath
   subset, see :func:`parse_path`) and writes ``<S3OutputPath>/<input name>.out`` streaming (a
   temp file committed to the own store, or an S3 multipart upload), in input order;
4. stops the instances, always, and records ``Completed``, ``Failed`` (with a FailureReason naming
   the file and line of the request that failed, after ``InvocationsMaxRetries`` retries) or
   ``Stopped`` (``StopTransformJob``: InProgress -> Stopping -> Stopped).

Progress (records and bytes) is kept in the record; ``DescribeTransformJob`` returns it under an
extra ``MainsailProgress`` key that botocore does not parse (the ``mainsail transform`` command
reads it over plain HTTP). A job interrupted by ``mainsail up`` stopping (or dying) stays
``InProgress``, and the next ``mainsail up`` resumes it: the instances it recorded are stopped, new
ones started, and only the inputs whose ``.out`` is not complete are transformed again. Outputs are
written atomically (a temp file renamed or committed, a multipart upload completed), so an output
that exists is complete; one written before the job first started (an earlier job's) is redone.
"""

from __future__ import annotations

import collections
import csv
import gzip
import http.client
import io
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from mainsail.aws.errors import ControlError, ResourceNotFound, ValidationException
from mainsail.aws.identity import sagemaker_arn
from mainsail.aws.protocol import Violations
from mainsail.backends.local import Backend, Instance, InstanceSpec, ModelSourceError
from mainsail.hosting import resources as res
from mainsail.hosting.calls import Call
from mainsail.hosting.store import Record, StateStore

logger = logging.getLogger(__name__)

TRANSFORM_JOB = "transform-job"
IN_PROGRESS, COMPLETED, FAILED, STOPPING, STOPPED = (
    "InProgress", "Completed", "Failed", "Stopping", "Stopped")
STATUSES = (IN_PROGRESS, COMPLETED, FAILED, STOPPING, STOPPED)
DEFAULT_MAX_PAYLOAD_MB = 6
UNLIMITED_PAYLOAD_MB = 100  # MaxPayloadInMB 0 ("no limit"): SageMaker's own ceiling
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_RETRIES = 3
MB = 1024 * 1024
CHUNK = 1 << 20
PART_SIZE = 8 * MB
_INTERNAL = ("Tags", "Progress", "Instances", "LastModifiedTime")
_S3_URI = re.compile(r"^(https|s3)://([^/]+)/?(.*)")
_LOCAL_URI = re.compile(r"^(file://)?/.*")
_BLANK = re.compile(rb"(?m)^[ \t\r]*(?:\n|\Z)")
_ENV_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,1023}")


class ResourceInUse(ControlError):
    """A transform job of that name already exists (400)."""

    code = "ResourceInUse"


class JobFailure(Exception):
    """The job fails; the text is its FailureReason."""


class _Cancelled(Exception):
    """StopTransformJob, or mainsail up stopping."""


# -- JSONPath subset -------------------------------------------------------------------------------

_SEGMENT = re.compile(
    r"\.(?P<name>[A-Za-z_][\w-]*)"
    r"|\[\s*(?P<star>\*)\s*\]"
    r"|\[\s*(?P<keys>(?:'[^']*'|\"[^\"]*\")(?:\s*,\s*(?:'[^']*'|\"[^\"]*\"))*)\s*\]"
    r"|\[\s*(?P<start>-?\d+)?\s*:\s*(?P<stop>-?\d+)?\s*\]"
    r"|\[\s*(?P<index>-?\d+(?:\s*,\s*-?\d+)*)\s*\]"
)
Segment = tuple[str, Any]


def parse_path(expr: str) -> list[Segment]:
    """The segments of a JSONPath in the subset SageMaker documents for DataProcessing: ``$``,
    ``$.a.b``, ``$['a','b']``, ``$[1]``, ``$[0,2]``, ``$[1:]``, ``$[:-1]``, ``$[*]`` and chains of
    them (``$.features[1:]``). ValueError when ``expr`` is outside it."""
    text = expr.strip()
    if not text.startswith("$"):
        raise ValueError(f"JSONPath {expr!r} must start with $")
    pos = 1
    segments: list[Segment] = []
    while pos < len(text):
        match = _SEGMENT.match(text, pos)
        if match is None:
            raise ValueError(f"unsupported JSONPath {expr!r} at {text[pos:]!r}")
        if match.group("name"):
            segments.append(("keys", [match.group("name")]))
        elif match.group("star"):
            segments.append(("all", None))
        elif match.group("keys"):
            names = [k.strip()[1:-1] for k in re.findall(r"'[^']*'|\"[^\"]*\"", match.group("keys"))]
            segments.append(("keys", names))
        elif match.group("index"):
            segments.append(("index", [int(i) for i in match.group("index").split(",")]))
        else:
            start, stop = match.group("start"), match.group("stop")
            segments.append(("slice", (int(start) if start else None, int(stop) if stop else None)))
        pos = match.end()
    return segments


def apply_path(value: Any, segments: list[Segment]) -> Any:
    """Select from ``value`` (a JSON value, or a CSV row as a list of fields) by ``segments``."""
    for kind, arg in segments:
        if kind == "all":
            continue
        if kind == "keys":
            if not isinstance(value, dict):
                raise ValueError(f"cannot select {arg} from a {type(value).__name__}")
            if len(arg) == 1:
                if arg[0] not in value:
                    raise ValueError(f"no member {arg[0]!r}")
                value = value[arg[0]]
            else:
                value = {k: value[k] for k in arg if k in value}
        elif kind == "slice":
            if not isinstance(value, list):
                raise ValueError(f"cannot slice a {type(value).__name__}")
            value = value[arg[0]:arg[1]]
        else:
            if not isinstance(value, list):
                raise ValueError(f"cannot index a {type(value).__name__}")
            try:
                picked = [value[i] for i in arg]
            except IndexError:
                raise ValueError(f"index {arg} out of range for {len(value)} items") from None
            value = picked[0] if len(arg) == 1 else picked
    return value


def _is_json(record: bytes, content_type: str | None) -> bool:
    if content_type and "json" in content_type:
        return True
    if content_type and "csv" in content_type:
        return False
    return record.lstrip()[:1] in (b"{", b"[")


def _csv_fields(record: bytes) -> list[str]:
    return next(csv.reader([record.decode("utf-8")]), [])


def _csv_row(value: Any) -> bytes:
    if not isinstance(value, list):
        return str(value).encode()
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(value)
    return out.getvalue().encode()


def filter_record(record: bytes, segments: list[Segment], content_type: str | None) -> bytes:
    """``record`` (one CSV or JSON line) selected by the parsed JSONPath ``segments``."""
    if not segments:
        return record
    if _is_json(record, content_type):
        return json.dumps(apply_path(json.loads(record), segments)).encode()
    return _csv_row(apply_path(_csv_fields(record), segments))


def join_record(source: bytes, output: bytes, content_type: str | None) -> bytes:
    """JoinSource Input: a JSON object gets the output under ``SageMakerOutput``, a JSON array gets
    it appended, a CSV row gets the output's columns appended."""
    if _is_json(source, content_type):
        parsed = json.loads(source)
        try:
            result: Any = json.loads(output)
        except ValueError:
            result = output.decode("utf-8", "replace")
        if isinstance(parsed, dict):
            return json.dumps({**parsed, "SageMakerOutput": result}).encode()
        if isinstance(parsed, list):
            return json.dumps(parsed + (result if isinstance(result, list) else [result])).encode()
        return json.dumps([parsed, result]).encode()
    return source.rstrip(b"\r\n") + b"," + output.strip()


def split_output(body: bytes, count: int) -> list[bytes]:
    """One output per input record: a JSON array of ``count`` items, or ``count`` lines."""
    stripped = body.strip()
    if stripped[:1] == b"[":
        try:
            items = json.loads(stripped)
        except ValueError:
            items = None
        if isinstance(items, list) and len(items) == count:
            return [json.dumps(item).encode() if not isinstance(item, str) else item.encode()
                    for item in items]
    lines = [line for line in stripped.split(b"\n") if line.strip()] if stripped else []
    if len(lines) == count:
        return [line.rstrip(b"\r") for line in lines]
    if count == 1:
        return [stripped]
    raise ValueError(f"the model answered {len(lines)} lines for {count} records")


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
            if v.required(source.get("S3DataType"), f"{path}.s3DataType"):
                _enum(v, source.get("S3DataType"), f"{path}.s3DataType",
                      ("ManifestFile", "S3Prefix", "AugmentedManifestFile"))
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
    if source.get("S3DataType") == "AugmentedManifestFile":
        raise ValidationException("S3DataType AugmentedManifestFile is not supported by mainsail.")
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
        "TransformJobStatus": IN_PROGRESS,
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
        if current["TransformJobStatus"] == IN_PROGRESS:
            current["TransformJobStatus"] = STOPPING
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


# -- input and output ----------------------------------------------------------------------------


def _s3_parts(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def _local(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if uri.startswith("/"):
        return Path(uri)
    return None


class _Counting(io.RawIOBase):
    """A readable that counts the bytes read from ``inner`` (compressed bytes, for progress)."""

    def __init__(self, inner: Any, on_read: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if n:
            self.on_read(n)
        return n

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            super().close()


@dataclass(frozen=True)
class InputObject:
    uri: str
    relative: str  # the output is <S3OutputPath>/<relative>.out
    size: int
    bucket: str = ""
    key: str = ""
    path: str = ""


class Storage:
    """Reads inputs and writes outputs: mainsail's own S3 store (no endpoint configured, as
    :func:`mainsail.backends.model_fetch.own_store`), real S3 through boto3, or local files."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._own: Any = None
        self._s3: Any = None

    def _use_own(self) -> bool:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return not endpoint and (self.home / "s3" / "buckets").is_dir()

    @property
    def own(self) -> Any:
        if self._own is None:
            from mainsail.aws.s3.store import S3Store

            self._own = S3Store(self.home / "s3", clean=False)
        return self._own

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            from mainsail.backends.model_fetch import s3_client

            self._s3 = s3_client()
        return self._s3

    def _s3_list(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        if self._use_own():
            from mainsail.aws.s3.store import S3Error

            try:
                return [(m.key, m.size) for m in self.own.list_objects(bucket, prefix)]
            except S3Error as exc:
                raise JobFailure(f"Could not list s3://{bucket}/{prefix}: {exc}") from None
        out: list[tuple[str, int]] = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        except Exception as exc:
            raise JobFailure(f"Could not list s3://{bucket}/{prefix}: {exc}") from None
        return out

    def _s3_read(self, bucket: str, key: str) -> Any:
        if self._use_own():
            from mainsail.aws.s3.store import S3Error

            try:
                return self.own.open(bucket, key)[1]
            except S3Error as exc:
                raise JobFailure(f"Could not read s3://{bucket}/{key}: {exc}") from None
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:
            raise JobFailure(f"Could not read s3://{bucket}/{key}: {exc}") from None

    def inputs(self, source: dict[str, Any]) -> list[InputObject]:
        """The objects a TransformS3DataSource names, in key order."""
        uri = str(source["S3Uri"])
        if source.get("S3DataType") == "ManifestFile":
            return self._manifest(uri)
        local = _local(uri)
        if local is not None:
            if local.is_file():
                return [InputObject(uri, local.name, local.stat().st_size, path=str(local))]
            if not local.is_dir():
                raise JobFailure(f"No input found at {uri}.")
            files = sorted(p for p in local.rglob("*") if p.is_file())
            return [InputObject(p.as_uri(), p.relative_to(local).as_posix(), p.stat().st_size,
                                path=str(p)) for p in files]
        bucket, prefix = _s3_parts(uri)
        base = prefix[:prefix.rfind("/") + 1]
        found = []
        for key, size in self._s3_list(bucket, prefix):
            if key.endswith("/"):
                continue
            if key == prefix:
                relative = PurePosixPath(key).name
            elif prefix.endswith("/") or key[len(prefix):].startswith("/"):
                relative = key[len(prefix):].lstrip("/")  # under the prefix as a folder
            else:
                relative = key[len(base):]  # a partial name (s3://b/data/tr -> train.csv)
            found.append(InputObject(f"s3://{bucket}/{key}", relative, size, bucket=bucket, key=key))
        if not found:
            raise JobFailure(f"No S3 objects found under S3 URL \"{uri}\" given in input data source.")
        return found

    def _manifest(self, uri: str) -> list[InputObject]:
        with self.open_raw(InputObject(uri, "", 0, *(_s3_parts(uri) if _local(uri) is None else ("", "")),
                                       path=str(_local(uri) or ""))) as fh:
            try:
                entries = json.loads(fh.read(16 * MB))
            except ValueError:
                raise JobFailure(f"The manifest file {uri} is not a JSON array.") from None
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict) \
                or "prefix" not in entries[0]:
            raise JobFailure(f'The manifest file {uri} must be [{{"prefix": "s3://..."}}, "key", ...].')
        prefix = str(entries[0]["prefix"])
        objects = []
        for rel in entries[1:]:
            full = prefix + str(rel)
            local = _local(full)
            if local is not None:
                size = local.stat().st_size if local.is_file() else 0
                objects.append(InputObject(full, str(rel), size, path=str(local)))
            else:
                bucket, key = _s3_parts(full)
                objects.append(InputObject(full, str(rel), 0, bucket=bucket, key=key))
        return objects

    def open_raw(self, obj: InputObject) -> Any:
        if obj.path:
            try:
                return open(obj.path, "rb")  # noqa: SIM115 - closed by the caller
            except OSError as exc:
                raise JobFailure(f"Could not read {obj.uri}: {exc}") from None
        return self._s3_read(obj.bucket, obj.key)

    def check_output(self, uri: str) -> None:
        """Fail early when the output bucket (or folder's parent) does not exist."""
        local = _local(uri)
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
            return
        bucket, _ = _s3_parts(uri)
        if self._use_own():
            from mainsail.aws.s3.store import S3Error

            try:
                self.own.bucket(bucket)
            except S3Error:
                raise JobFailure(f"The output bucket {bucket} does not exist.") from None
        else:
            try:
                self.s3.head_bucket(Bucket=bucket)
            except Exception as exc:
                raise JobFailure(f"The output bucket {bucket} is not usable: {exc}") from None

    def output_done(self, uri: str, since: float) -> bool:
        """Whether the output ``uri`` exists and was written at ``since`` or later (outputs are
        written atomically, so one that exists is complete; the time tells this job's outputs from
        an earlier job's under the same path). ``since`` should allow for S3's whole seconds."""
        local = _local(uri)
        if local is not None:
            try:
                return local.is_file() and local.stat().st_mtime >= since
            except OSError:
                return False
        bucket, key = _s3_parts(uri)
        if self._use_own():
            from mainsail.aws.s3.store import S3Error

            try:
                return float(self.own.head(bucket, key).last_modified) >= since
            except S3Error:
                return False
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except Exception:
            return False
        return float(head["LastModified"].timestamp()) >= since

    def writer(self, uri: str, content_type: str | None) -> _Sink:
        local = _local(uri)
        if local is not None:
            return _FileSink(local)
        bucket, key = _s3_parts(uri)
        if self._use_own():
            return _OwnSink(self.own, bucket, key, content_type)
        return _MultipartSink(self.s3, bucket, key, content_type)


class _Sink:
    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _FileSink(_Sink):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(path.name + ".mainsail-tmp")
        self.fh: IO[bytes] = self.tmp.open("wb")

    def write(self, data: bytes) -> None:
        self.fh.write(data)

    def commit(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


class _OwnSink(_Sink):
    """A streamed put into the own S3 store: a temp file, committed as one object at the end."""

    def __init__(self, store: Any, bucket: str, key: str, content_type: str | None) -> None:
        self.store, self.bucket, self.key = store, bucket, key
        self.content_type = content_type or "binary/octet-stream"
        self.temp = store.new_temp()

    def write(self, data: bytes) -> None:
        self.temp.write(data)

    def commit(self) -> None:
        from mainsail.aws.s3.store import ObjectMeta, S3Error

        try:
            self.store.commit(self.bucket, self.temp, ObjectMeta(key=self.key, content_type=self.content_type))
        except S3Error as exc:
            raise JobFailure(f"Could not write s3://{self.bucket}/{self.key}: {exc}") from None

    def abort(self) -> None:
        self.temp.abort()


class _MultipartSink(_Sink):
    """An S3 multipart upload of PART_SIZE parts (one PutObject when the output is small)."""

    def __init__(self, s3: Any, bucket: str, key: str, content_type: str | None) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.content_type = content_type or "binary/octet-stream"
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def _flush(self) -> None:
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type)["UploadId"]
        number = len(self.parts) + 1
        etag = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                   PartNumber=number, Body=bytes(self.buffer))["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})
        self.buffer.clear()

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= PART_SIZE:
            self._flush()

    def commit(self) -> None:
        try:
            if self.upload_id is None:
                self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer),
                                   ContentType=self.content_type)
                return
            if self.buffer:
                self._flush()
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                              MultipartUpload={"Parts": self.parts})
        except Exception as exc:
            raise JobFailure(f"Could not write s3://{self.bucket}/{self.key}: {exc}") from None

    def abort(self) -> None:
        if self.upload_id is not None:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except Exception:
                logger.warning("could not abort the upload of s3://%s/%s", self.bucket, self.key)


def _chunks(fh: Any) -> Iterator[bytes]:
    while True:
        data = fh.read(CHUNK)
        if not data:
            return
        yield data


def split_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of the non-blank lines of a byte stream (``\\r\\n`` too)."""
    rest = b""
    number = 0
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            number += 1
            line = part[:-1] if part.endswith(b"\r") else part
            if line.strip():
                yield number, line
    if rest.strip():
        yield number + 1, rest[:-1] if rest.endswith(b"\r") else rest


@dataclass
class Batch:
    """One request: its records (as read, and as sent) and the lines they came from."""

    first_line: int
    last_line: int
    records: list[bytes] = field(default_factory=list)
    size: int = 0
    whole: bool = False
    payload: bytes | None = None  # packed lines, sent as they are (no per-record work)
    count: int = 0

    @property
    def n_records(self) -> int:
        return self.count if self.payload is not None else len(self.records)

    def where(self, uri: str) -> str:
        if self.whole:
            return uri
        if self.first_line == self.last_line:
            return f"{uri}, line {self.first_line}"
        return f"{uri}, lines {self.first_line}-{self.last_line}"


# -- the runner ----------------------------------------------------------------------------------


class _Connections:
    """Keep-alive HTTP/1.1 connections to the instances, one per (thread, port). The standard
    library's client, not httpx: its request/response objects form reference cycles that hold the
    megabyte bodies until the cyclic GC runs, which multiplied the control plane's memory."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, port: int, payload: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conns: dict[int, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(port)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            conns[port] = conn
            with self._lock:
                self._all.append(conn)
        try:
            conn.request("POST", "/invocations", body=payload, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.will_close:
                conn.close()
            return response.status, body
        except BaseException:
            conn.close()
            conns.pop(port, None)
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class _Job:
    """One job's run, in its own thread."""

    def __init__(self, runner: TransformRunner, record: Record) -> None:
        self.runner = runner
        self.name: str = record["TransformJobName"]
        self.record = record
        self.cancel = threading.Event()
        """StopTransformJob, or mainsail up stopping (then ``shutdown`` is true)."""
        self.halt = threading.Event()
        """Another input file failed: the others stop too."""
        self.shutdown = False
        self.resumed = "TransformStartTime" in record  # an earlier mainsail up started it
        self.instances: list[Instance] = []
        self.progress: dict[str, int] = dict(record.get("Progress") or {})
        self._last_flush = 0.0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name=f"mainsail-transform-{self.name}",
                                       daemon=True)

    # settings
    @property
    def payload_limit(self) -> int:
        mb = int(self.record.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB))
        return (mb or UNLIMITED_PAYLOAD_MB) * MB

    def _write(self, mutate: Callable[[Record], None]) -> None:
        def apply(current: Record) -> Record:
            mutate(current)
            current["LastModifiedTime"] = time.time()
            return current

        self.runner.store.update(TRANSFORM_JOB, self.name, apply)

    def _add(self, **counts: int) -> None:
        with self._lock:
            for key, n in counts.items():
                self.progress[key] = self.progress.get(key, 0) + n
        if time.monotonic() - self._last_flush > 0.5:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        with self._lock:
            snapshot = dict(self.progress)

        def keep(current: Record) -> None:
            current["Progress"] = snapshot

        self._write(keep)

    def _check(self) -> None:
        if self.cancel.is_set() or self.halt.is_set():
            raise _Cancelled()

    # the run
    def run(self) -> None:
        status, reason = COMPLETED, None
        try:
            if not self.resumed:
                self._write(lambda r: r.__setitem__("TransformStartTime", time.time()))
            self._execute()
        except _Cancelled:
            status = IN_PROGRESS if self.shutdown else STOPPED  # a shutdown: resumed by the next start
        except (JobFailure, ModelSourceError) as exc:
            status, reason = FAILED, str(exc)
        except Exception as exc:  # a bug: the job fails, mainsail up goes on
            logger.exception("transform job %s failed", self.name)
            status, reason = FAILED, f"InternalServerError: {type(exc).__name__}: {exc}"
        finally:
            self._stop_instances()
        with self._lock:
            snapshot = dict(self.progress)

        def finish(current: Record) -> None:
            final = status
            if current["TransformJobStatus"] == STOPPING and not self.shutdown:
                final = STOPPED
            current["Progress"] = snapshot
            current["Instances"] = []
            if final == IN_PROGRESS:  # mainsail up stops: the job stays InProgress, to be resumed
                return
            current["TransformJobStatus"] = final
            current["TransformEndTime"] = time.time()
            if final == FAILED and reason:
                current["FailureReason"] = reason[:1024]

        self._write(finish)
        if status == IN_PROGRESS:
            logger.info("transform job %s interrupted by shutdown; the next mainsail up resumes it", self.name)
        else:
            logger.info("transform job %s: %s%s", self.name, status, f" ({reason})" if reason else "")

    def _stop_instances(self) -> None:
        instances, self.instances = self.instances, []
        for instance in instances:
            try:
                self.runner.backend.stop(instance)
            except Exception:
                logger.exception("stopping instance %d of transform job %s", instance.pid, self.name)

    def _spec_environment(self) -> tuple[str, dict[str, str]]:
        model = self.runner.store.get(res.MODEL, self.record["ModelName"])
        if model is None:
            raise JobFailure(f"Model {self.record['ModelName']} no longer exists.")
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        from mainsail.backends.model_fetch import container_model_source

        url = container_model_source(container)
        if not url:
            raise JobFailure(f"Model {self.record['ModelName']} has no ModelDataUrl or ModelDataSource.")
        env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
        env.update({str(k): str(v) for k, v in (self.record.get("Environment") or {}).items()})
        strategy = self.record.get("BatchStrategy") or "MultiRecord"
        env.update({
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.payload_limit // MB),
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(self.concurrency),
            "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD" if strategy == "MultiRecord" else "SINGLE_RECORD",
            "MAINSAIL_MAX_CONCURRENT_TRANSFORMS": str(self.concurrency),
            "MAINSAIL_BATCH_STRATEGY": "MULTI_RECORD" if strategy == "MultiRecord" else "SINGLE_RECORD",
        })
        env.setdefault("SAGEMAKER_MODEL_SERVER_TIMEOUT", str(int(self.timeout)))
        return url, env

    @property
    def concurrency(self) -> int:
        """Requests in flight per instance: ``MaxConcurrentTransforms``, default 1."""
        return int(self.record.get("MaxConcurrentTransforms") or 0) or 1

    @property
    def slots(self) -> int:
        """Requests in flight at once, over all instances and input files."""
        return self.concurrency * int(self.record["TransformResources"]["InstanceCount"])

    @property
    def timeout(self) -> float:
        config = self.record.get("ModelClientConfig") or {}
        return float(config.get("InvocationsTimeoutInSeconds") or DEFAULT_TIMEOUT_S)

    @property
    def retries(self) -> int:
        config = self.record.get("ModelClientConfig") or {}
        value = config.get("InvocationsMaxRetries")
        return DEFAULT_RETRIES if value is None else int(value)

    def _start_instances(self) -> None:
        url, env = self._spec_environment()
        count = int(self.record["TransformResources"]["InstanceCount"])
        for index in range(count):
            self._check()
            self.instances.append(self.runner.backend.start(InstanceSpec(
                endpoint=f"transform-{self.name}", variant="transform", index=index,
                model_data_url=url, environment=dict(env))))
            records = [i.to_record() for i in self.instances]

            def keep(current: Record, records: list[dict[str, Any]] = records) -> None:
                current["Instances"] = records

            self._write(keep)
        deadline = time.monotonic() + self.runner.startup_timeout
        waiting = list(self.instances)
        while waiting:
            self._check()
            for instance in list(waiting):
                reason = self.runner.backend.failure(instance)
                if reason is not None:
                    raise JobFailure(f"The model failed to start: {reason}")
                if self.runner.backend.healthy(instance):
                    waiting.remove(instance)
            if waiting:
                if time.monotonic() > deadline:
                    raise JobFailure(f"The model did not answer /ping within "
                                     f"{self.runner.startup_timeout:.0f} seconds.")
                self.cancel.wait(0.1)

    def _execute(self) -> None:
        storage = self.runner.storage
        tin, tout = self.record["TransformInput"], self.record["TransformOutput"]
        objects = storage.inputs(tin["DataSource"]["S3DataSource"])
        storage.check_output(str(tout["S3OutputPath"]))
        done: list[InputObject] = []
        if self.resumed:
            # S3 keeps whole seconds: an output of this job is at most 1 s older than its start
            since = float(self.record["TransformStartTime"]) - 1.0
            done = [o for o in objects if storage.output_done(self._output_uri(o), since)]
            logger.info("resuming transform job %s: %d of %d outputs are complete", self.name,
                        len(done), len(objects))
        skip = set(done)
        todo = [o for o in objects if o not in skip]
        with self._lock:
            self.progress.update(Objects=len(objects), InputBytes=sum(o.size for o in objects),
                                 ObjectsDone=len(done), BytesRead=sum(o.size for o in done))
        self.flush()
        if not todo:
            return
        self._start_instances()
        http = _Connections(self.timeout)
        slots = threading.Semaphore(self.slots)
        picker = itertools.count()
        try:
            # up to `slots` requests in flight, over as many input files at once (each file
            # streamed and written in order, as alone); slots are held until an answer is written
            with ThreadPoolExecutor(self.slots, thread_name_prefix=f"transform-{self.name}") as pool, \
                    ThreadPoolExecutor(min(self.slots, len(todo)),
                                       thread_name_prefix=f"transform-{self.name}-file") as files:
                futures = [files.submit(self._transform_file, obj, http, pool, slots, picker) for obj in todo]
                while True:
                    finished, running = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                    errors = [error for f in finished if (error := f.exception()) is not None]
                    if errors or not running:
                        break
                    if self.cancel.is_set() and self.instances:
                        # requests in flight end with their instances (not after their timeout)
                        self._stop_instances()
                if errors:
                    self.halt.set()
                    self._stop_instances()  # no request in flight is waited for
                    for future in futures:
                        future.cancel()
                    wait(futures)
                    if self.cancel.is_set():  # a stop: whatever the files raised on the way out
                        raise _Cancelled()
                    raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
        finally:
            http.close()
        self.flush()

    def _output_uri(self, obj: InputObject) -> str:
        return str(self.record["TransformOutput"]["S3OutputPath"]).rstrip("/") + "/" + obj.relative + ".out"

    def _transform_file(self, obj: InputObject, http: _Connections, pool: ThreadPoolExecutor,
                        slots: threading.Semaphore, picker: Iterator[int]) -> None:
        self._check()
        self._transform_object(obj, http, pool, slots, picker)
        self._add(ObjectsDone=1)

    def _batches(self, obj: InputObject, stream: Any) -> Iterator[Batch]:
        tin = self.record["TransformInput"]
        limit = self.payload_limit
        if tin.get("SplitType", "None") == "None":
            data = stream.read(limit + 1)
            if len(data) > limit:
                raise JobFailure(f"{obj.uri} is larger than MaxPayloadInMB ({limit // MB} MB); "
                                 "use SplitType Line or a larger MaxPayloadInMB.")
            yield Batch(1, 1, [data], len(data), whole=True)
            return
        single = self.record.get("BatchStrategy") == "SingleRecord"
        if not single and not self._per_record:
            yield from self._packed(obj, stream)
            return
        batch: Batch | None = None
        for number, line in split_lines(_chunks(stream)):
            if len(line) + 1 > limit:
                raise JobFailure(f"The record at {obj.uri}, line {number} is {len(line)} bytes, more "
                                 f"than MaxPayloadInMB ({limit // MB} MB).")
            if batch is not None and (single or batch.size + len(line) + 1 > limit):
                yield batch
                batch = None
            if batch is None:
                batch = Batch(number, number)
            batch.records.append(line)
            batch.size += len(line) + 1
            batch.last_line = number
        if batch is not None:
            yield batch

    @property
    def _per_record(self) -> bool:
        processing = self.record.get("DataProcessing") or {}
        return bool(processing.get("InputFilter") or processing.get("OutputFilter")
                    or processing.get("JoinSource") == "Input")

    def _packed(self, obj: InputObject, stream: Any) -> Iterator[Batch]:
        """MultiRecord with nothing to do per record: whole lines cut from the stream up to the
        payload limit, never split into per-line objects (blank lines are dropped)."""
        limit = self.payload_limit
        buf = bytearray()
        line = 1
        eof = False
        while True:
            while len(buf) <= limit and not eof:
                data = stream.read(CHUNK)
                if data:
                    buf += data
                else:
                    eof = True
            if eof and len(buf) <= limit:
                cut = len(buf)
            else:
                cut = buf.rfind(b"\n", 0, limit) + 1
                if cut == 0:
                    raise JobFailure(f"The record at {obj.uri}, line {line} is more than MaxPayloadInMB "
                                     f"({limit // MB} MB).")
            with memoryview(buf) as view:
                piece = bytes(view[:cut])
            del buf[:cut]
            lines = piece.count(b"\n") + (0 if piece.endswith(b"\n") or not piece else 1)
            if b"\n\n" in piece or b"\n\r\n" in piece or piece[:1] in (b"\n", b"\r") or b"\n \n" in piece:
                piece = _BLANK.sub(b"", piece)
            if piece and not piece.endswith(b"\n"):
                piece += b"\n"
            if piece:
                yield Batch(line, line + lines - 1, payload=piece, count=piece.count(b"\n"), size=len(piece))
            line += lines
            if eof and not buf:
                return

    def _invoke(self, http: _Connections, instance: Instance, payload: bytes) -> bytes:
        tin, tout = self.record["TransformInput"], self.record["TransformOutput"]
        headers = {"Content-Type": tin.get("ContentType") or "application/octet-stream"}
        if tout.get("Accept"):
            headers["Accept"] = tout["Accept"]
        problem = ""
        for attempt in range(self.retries + 1):
            self._check()
            try:
                status, body = http.post(instance.port, payload, headers)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    return body
                problem = (f"Bad HTTP status received from algorithm: {status}: "
                           f"{body[:300].decode('utf-8', 'replace')}")
            if attempt < self.retries:
                self.cancel.wait(min(0.1 * 2 ** attempt, 2.0))
        self._check()  # a request cut short by a stop is no failure of the job
        raise JobFailure(problem)

    def _transform_object(self, obj: InputObject, http: _Connections, pool: ThreadPoolExecutor,
                          slots: threading.Semaphore, picker: Iterator[int]) -> None:
        tin, tout = self.record["TransformInput"], self.record["TransformOutput"]
        processing = self.record.get("DataProcessing") or {}
        content_type = tin.get("ContentType")
        in_filter = parse_path(processing["InputFilter"]) if processing.get("InputFilter") else []
        out_filter = parse_path(processing["OutputFilter"]) if processing.get("OutputFilter") else []
        join = processing.get("JoinSource") == "Input"
        line_split = tin.get("SplitType", "None") == "Line"
        per_record = join or bool(out_filter)
        assemble_line = tout.get("AssembleWith") == "Line"
        sink = self.runner.storage.writer(self._output_uri(obj), tout.get("Accept"))

        def payload_of(batch: Batch) -> bytes:
            if batch.payload is not None:
                return batch.payload
            try:
                sent = [filter_record(r, in_filter, content_type) for r in batch.records] if in_filter \
                    else batch.records
            except (ValueError, UnicodeDecodeError) as exc:
                raise JobFailure(f"InputFilter failed on {batch.where(obj.uri)}: {exc}") from None
            if not line_split:
                return sent[0]
            return b"\n".join(sent) + b"\n"

        def assemble(batch: Batch, body: bytes) -> bytes:
            if not per_record:
                if assemble_line and body and not body.endswith(b"\n"):
                    return body + b"\n"
                return body
            try:
                outputs = split_output(body, len(batch.records))
                pieces = []
                for source, output in zip(batch.records, outputs, strict=True):
                    joined = join_record(source, output, content_type) if join else output
                    pieces.append(filter_record(joined, out_filter, None) if out_filter else joined)
            except (ValueError, UnicodeDecodeError) as exc:
                raise JobFailure(f"Could not process the output of {batch.where(obj.uri)}: {exc}") from None
            sep = b"\n" if assemble_line else b""
            return sep.join(pieces) + sep

        def call(batch: Batch, payload: bytes) -> bytes:
            instances = self.instances
            if not instances:  # stopped: the job is cancelled
                raise _Cancelled()
            instance = instances[next(picker) % len(instances)]
            try:
                return self._invoke(http, instance, payload)
            except JobFailure as exc:
                raise JobFailure(f"{exc} (request for {batch.where(obj.uri)})") from None

        pending: collections.deque[tuple[Batch, Future[bytes]]] = collections.deque()

        def drain_one() -> None:
            batch, future = pending[0]
            body = future.result()
            pending.popleft()
            slots.release()
            sink.write(assemble(batch, body))
            self._add(Records=batch.n_records, Requests=1)

        def take_slot() -> None:
            """A request slot: while none is free, write this file's oldest answer (which frees
            its slot) or, with nothing pending, wait for another file's."""
            while not slots.acquire(blocking=False):
                if pending:
                    drain_one()
                else:
                    self._check()
                    if slots.acquire(timeout=0.1):
                        return

        def abandon() -> None:
            for _, future in pending:
                future.cancel()
                slots.release()
            pending.clear()
            sink.abort()

        raw = self.runner.storage.open_raw(obj)
        stream: Any = io.BufferedReader(_Counting(raw, lambda n: self._add(BytesRead=n)), CHUNK)
        try:
            if tin.get("CompressionType") == "Gzip":
                stream = gzip.GzipFile(fileobj=stream, mode="rb")
            for batch in self._batches(obj, stream):
                self._check()
                payload = payload_of(batch)
                take_slot()
                try:
                    pending.append((batch, pool.submit(call, batch, payload)))
                except BaseException:
                    slots.release()
                    raise
                del payload
            while pending:
                drain_one()
            self._check()
            sink.commit()
        except (gzip.BadGzipFile, EOFError, OSError) as exc:
            abandon()
            raise JobFailure(f"Could not read {obj.uri}: {exc}") from None
        except BaseException:
            abandon()
            raise
        finally:
            stream.close()


class TransformRunner:
    """Runs the InProgress transform jobs of ``store`` on instances of ``backend``, each in a thread.

    ``start()`` first settles jobs an earlier ``mainsail up`` left running (their instances
    stopped; Stopping ones Stopped, InProgress ones resumed by the next poll), then polls the store
    every ``interval`` seconds. ``stop()`` interrupts running jobs (instances stopped, partial
    outputs discarded, left InProgress for the next start to resume) and joins them.
    """

    def __init__(self, store: StateStore, backend: Backend, home: Path, *, interval: float = 0.2,
                 startup_timeout: float = 600.0) -> None:
        self.store = store
        self.backend = backend
        self.home = Path(home)
        self.interval = interval
        self.startup_timeout = startup_timeout
        self.storage = Storage(self.home)
        self._jobs: dict[str, _Job] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self.recover()
            self._thread = threading.Thread(target=self._run, name="mainsail-transform", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for job in list(self._jobs.values()):
            job.shutdown = True
            job.cancel.set()
        for job in list(self._jobs.values()):
            job.thread.join(timeout)
        self._jobs.clear()

    def recover(self) -> None:
        """Settle jobs an earlier control plane left running: their instances are stopped;
        ``Stopping`` ones become ``Stopped``, ``InProgress`` ones stay so, and the first poll
        resumes them (redoing only the inputs whose output is not complete)."""
        for record in self.store.list(TRANSFORM_JOB):
            if record["TransformJobStatus"] not in (IN_PROGRESS, STOPPING):
                continue
            for item in record.get("Instances", []):
                try:
                    self.backend.stop(Instance.from_record(item))
                except Exception:
                    logger.exception("stopping a leftover instance of transform job %s",
                                     record["TransformJobName"])

            def settle(current: Record) -> Record:
                if current["TransformJobStatus"] == STOPPING:
                    current["TransformJobStatus"] = STOPPED
                    current["TransformEndTime"] = time.time()
                current["LastModifiedTime"] = time.time()
                current["Instances"] = []
                return current

            self.store.update(TRANSFORM_JOB, record["TransformJobName"], settle)
            if record["TransformJobStatus"] == IN_PROGRESS:
                logger.warning("transform job %s was interrupted by a restart; resuming it",
                               record["TransformJobName"])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                logger.exception("transform runner poll failed")
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """Start new InProgress jobs, pass StopTransformJob on to running ones, forget finished ones."""
        for name, running in list(self._jobs.items()):
            if not running.thread.is_alive():
                del self._jobs[name]
        for record in self.store.list(TRANSFORM_JOB):
            name, status = record["TransformJobName"], record["TransformJobStatus"]
            job = self._jobs.get(name)
            if status == IN_PROGRESS and job is None and not self._stop.is_set():
                new = _Job(self, record)
                self._jobs[name] = new
                new.thread.start()
            elif status == STOPPING:
                if job is not None:
                    job.cancel.set()
                else:
                    def stopped(current: Record) -> Record:
                        if current["TransformJobStatus"] == STOPPING:
                            current["TransformJobStatus"] = STOPPED
                            current["TransformEndTime"] = current["LastModifiedTime"] = time.time()
                        return current

                    self.store.update(TRANSFORM_JOB, name, stopped)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Whether every job thread finished within ``timeout`` (for tests)."""
        deadline = time.monotonic() + timeout
        for job in list(self._jobs.values()):
            job.thread.join(max(0.0, deadline - time.monotonic()))
        return all(not j.thread.is_alive() for j in self._jobs.values())
