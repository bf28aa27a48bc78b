"""The SageMaker hosting API over AWS JSON 1.1: ``POST /`` dispatched on ``X-Amz-Target``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.control import endpoints, logs, s3, s3store, sts, transform
from mainsail.control import resources as res
from mainsail.control.async_inference import AsyncInference
from mainsail.control.errors import (
    ControlError,
    SerializationException,
    UnknownOperationException,
    ValidationException,
)
from mainsail.control.router import Router
from mainsail.control.store import Record, StateStore

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."
_CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/")


@dataclass(frozen=True)
class Call:
    """One API call: the store, the region from the SigV4 credential scope, and the JSON input."""

    store: StateStore
    region: str
    body: dict[str, Any]


Operation = Callable[[Call], dict[str, Any]]


def region_of(authorization: str | None) -> str:
    """The region in a SigV4 ``Authorization`` header's credential scope (default us-east-1)."""
    match = _CREDENTIAL_RE.search(authorization or "")
    return match.group(1) if match else res.DEFAULT_REGION


def _public(record: Record) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "Tags"}


def _require(call: Call, member: str) -> str:
    value = call.body.get(member)
    if not isinstance(value, str):
        v = res.Violations()
        if value is None:
            v.add(None, member[:1].lower() + member[1:], "Member must not be null")
        else:
            v.add(value, member[:1].lower() + member[1:], "Member must be a string")
        v.raise_if_any()
    assert isinstance(value, str)
    return value


def _get(call: Call, kind: str, name: str) -> Record:
    record = call.store.get(kind, name)
    if record is None:
        raise res.not_found(kind, res.arn(call.region, kind, name))
    return record


def _paginate(call: Call, items: list[dict[str, Any]], key: str, *, default_max: int,
              min_max: int = 1, max_max: int = 100) -> dict[str, Any]:
    v = res.Violations()
    max_results = call.body.get("MaxResults")
    v.number(max_results, "maxResults", minimum=min_max, maximum=max_max)
    v.raise_if_any()
    limit = int(max_results) if max_results is not None else default_max
    token = call.body.get("NextToken")
    offset = 0
    if token:
        try:
            offset = int(base64.urlsafe_b64decode(str(token).encode()).decode())
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise ValidationException("Invalid pagination token.") from None
    page = items[offset:offset + limit]
    out: dict[str, Any] = {key: page}
    if offset + limit < len(items):
        out["NextToken"] = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
    return out


def _list(call: Call, kind: str, name_key: str, arn_key: str, out_key: str) -> dict[str, Any]:
    body = call.body
    v = res.Violations()
    sort_by = body.get("SortBy", "CreationTime")
    sort_order = body.get("SortOrder", "Descending")
    if sort_by not in ("Name", "CreationTime"):
        v.add(sort_by, "sortBy", "Member must satisfy enum value set: [Name, CreationTime]")
    if sort_order not in ("Ascending", "Descending"):
        v.add(sort_order, "sortOrder", "Member must satisfy enum value set: [Ascending, Descending]")
    v.raise_if_any()
    records = call.store.list(kind)
    contains = body.get("NameContains")
    if contains:
        records = [r for r in records if str(contains).lower() in r[name_key].lower()]
    before, after = body.get("CreationTimeBefore"), body.get("CreationTimeAfter")
    if before is not None:
        records = [r for r in records if r["CreationTime"] < float(before)]
    if after is not None:
        records = [r for r in records if r["CreationTime"] > float(after)]
    field = name_key if sort_by == "Name" else "CreationTime"
    records.sort(key=lambda r: (r[field], r[name_key]), reverse=sort_order == "Descending")
    summaries = [{name_key: r[name_key], arn_key: r[arn_key], "CreationTime": r["CreationTime"]}
                 for r in records]
    return _paginate(call, summaries, out_key, default_max=10)


# -- models ------------------------------------------------------------------------------------


def create_model(call: Call) -> dict[str, Any]:
    record = res.new_model(call.body, call.region)
    if not call.store.insert(res.MODEL, record["ModelName"], record):
        raise res.already_exists(res.MODEL, record["ModelArn"])
    return {"ModelArn": record["ModelArn"]}


def describe_model(call: Call) -> dict[str, Any]:
    return _public(_get(call, res.MODEL, _require(call, "ModelName")))


def list_models(call: Call) -> dict[str, Any]:
    return _list(call, res.MODEL, "ModelName", "ModelArn", "Models")


def delete_model(call: Call) -> dict[str, Any]:
    name = _require(call, "ModelName")
    if not call.store.delete(res.MODEL, name):
        raise res.not_found(res.MODEL, res.arn(call.region, res.MODEL, name))
    return {}


# -- endpoint configs --------------------------------------------------------------------------


def create_endpoint_config(call: Call) -> dict[str, Any]:
    record = res.new_endpoint_config(call.body, call.region)
    for model_name in res.variant_model_names(record):
        _get(call, res.MODEL, model_name)
    if not call.store.insert(res.ENDPOINT_CONFIG, record["EndpointConfigName"], record):
        raise res.already_exists(res.ENDPOINT_CONFIG, record["EndpointConfigArn"])
    return {"EndpointConfigArn": record["EndpointConfigArn"]}


def describe_endpoint_config(call: Call) -> dict[str, Any]:
    return _public(_get(call, res.ENDPOINT_CONFIG, _require(call, "EndpointConfigName")))


def list_endpoint_configs(call: Call) -> dict[str, Any]:
    return _list(call, res.ENDPOINT_CONFIG, "EndpointConfigName", "EndpointConfigArn",
                 "EndpointConfigs")


def delete_endpoint_config(call: Call) -> dict[str, Any]:
    name = _require(call, "EndpointConfigName")
    if not call.store.delete(res.ENDPOINT_CONFIG, name):
        raise res.not_found(res.ENDPOINT_CONFIG, res.arn(call.region, res.ENDPOINT_CONFIG, name))
    return {}


# -- tags --------------------------------------------------------------------------------------

_ARN_KEYS = {res.MODEL: ("ModelArn", "ModelName"),
             res.ENDPOINT_CONFIG: ("EndpointConfigArn", "EndpointConfigName"),
             endpoints.ENDPOINT: ("EndpointArn", "EndpointName")}
_RESOURCE_ARN_RE = re.compile(r"arn:aws[a-z-]*:sagemaker:[a-z0-9-]*:[0-9]{12}:(.+)")


def _find_by_arn(call: Call, resource_arn: str) -> tuple[str, str]:
    """The (kind, name) a taggable ARN refers to; ValidationException when there is none."""
    match = _RESOURCE_ARN_RE.fullmatch(resource_arn)
    if match is None:
        v = res.Violations()
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
    resource_arn = _require(call, "ResourceArn")
    tags = call.body.get("Tags")
    v = res.Violations()
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
    resource_arn = _require(call, "ResourceArn")
    keys = call.body.get("TagKeys")
    v = res.Violations()
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
    resource_arn = _require(call, "ResourceArn")
    kind, name = _find_by_arn(call, resource_arn)
    record = _get(call, kind, name)
    return _paginate(call, list(record.get("Tags", [])), "Tags", default_max=50, min_max=50,
                     max_max=10**9)


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
    **endpoints.OPERATIONS,
    **transform.OPERATIONS,
}


def _respond(status: int, payload: dict[str, Any], request_id: str) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type=CONTENT_TYPE,
                    headers={"x-amzn-RequestId": request_id})


def create_control_app(store: StateStore, router: Router | None = None, *,
                       home: Path | None = None, s3_root: Path | None = None) -> Starlette:
    """The control-plane ASGI app: SageMaker JSON 1.1 operations over ``store``, the runtime API
    (``router``, one over ``store`` by default) and ``/metrics``."""
    router = router or Router(store)
    if home is None:
        from mainsail.control.backends import default_home

        home = default_home()
    logs_api = logs.LogsApi(home)
    async_api = AsyncInference(store, router, home)

    async def dispatch(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        target = request.headers.get("x-amz-target")
        try:
            op_name = target[len(TARGET_PREFIX):] if target and target.startswith(
                TARGET_PREFIX) else None
            if target is None and sts.is_query_call(request.headers.get("content-type")):
                return sts.handle(await request.body(), request_id)
            if target and target.startswith(logs.TARGET_PREFIX):  # CloudWatch Logs, over the log files
                result = await run_in_threadpool(logs_api.call, target, await request.body(),
                                                 region_of(request.headers.get("authorization")))
                return _respond(200, result, request_id)
            operation = OPERATIONS.get(op_name or "")
            if operation is None:
                raise UnknownOperationException(target)
            raw = await request.body()
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise SerializationException("Request body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise SerializationException("Request body must be a JSON object.")
            call = Call(store, region_of(request.headers.get("authorization")), body)
            # SQLite calls block: keep them off the event loop
            result = await run_in_threadpool(operation, call)
            if operation is endpoints.describe_endpoint:
                result = await _settle(call, result)
            return _respond(200, result, request_id)
        except ControlError as exc:
            return _respond(exc.status_code, exc.to_aws(), request_id)
        except Exception as exc:
            logger.exception("control operation %s failed", target)
            return _respond(500, {"__type": "InternalFailure",
                                  "Message": f"{type(exc).__name__}: {exc}"}, request_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async_api.start()
        yield
        await async_api.stop()
        await router.aclose()

    # the runtime API (no X-Amz-Target) lives on its own REST paths
    # S3 (path style) answers what the control plane does not, and what is signed for s3
    s3_first, s3_last = s3.s3_routes(s3store.S3Store(s3_root or home / "s3"))
    return Starlette(routes=[s3_first, Route("/", dispatch, methods=["POST"]), router.route, async_api.route,
                             Route("/metrics", router.metrics_endpoint, methods=["GET"]), s3_last],
                     lifespan=lifespan)


async def _settle(call: Call, result: dict[str, Any]) -> dict[str, Any]:
    """Re-describe a Creating/Updating/Deleting endpoint for up to DESCRIBE_SETTLE_SECONDS so that a
    client's first poll (boto3's waiters poll at once, then sleep 30 s) already sees where it lands.
    Waits on the event loop, holding no thread; a deleted endpoint raises ValidationException here."""
    deadline = time.monotonic() + endpoints.DESCRIBE_SETTLE_SECONDS
    while result.get("EndpointStatus") in endpoints.SETTLING and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        result = await run_in_threadpool(endpoints.describe_endpoint, call)
    return result
