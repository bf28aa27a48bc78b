"""Endpoint operations (Create/Describe/List/DeleteEndpoint) and the runtime ``InvokeEndpoint`` route.

Operations only write desired state to the store; the ``Reconciler`` makes it so.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.control import resources as res
from mainsail.control.errors import ValidationException
from mainsail.control.store import Record, StateStore

if TYPE_CHECKING:
    from mainsail.control.api import Call

ENDPOINT = "endpoint"
CREATING, IN_SERVICE, FAILED, DELETING = "Creating", "InService", "Failed", "Deleting"
INTERNAL_KEYS = ("Tags", "Instances")
#: How long DescribeEndpoint waits for a Creating endpoint to settle before answering.
DESCRIBE_SETTLE_SECONDS = float(os.environ.get("MAINSAIL_DESCRIBE_SETTLE_SECONDS", "5"))
MAX_PAYLOAD = 6 * 1024 * 1024


def endpoint_arn(region: str, name: str) -> str:
    return res.arn(region, ENDPOINT, name)


def not_found(resource_arn: str) -> ValidationException:
    return ValidationException(f'Could not find endpoint "{resource_arn}".')


def public(record: Record) -> dict[str, Any]:
    """The DescribeEndpoint shape of a stored record."""
    return {k: v for k, v in record.items() if k not in INTERNAL_KEYS}


def _name(call: Call) -> str:
    value = call.body.get("EndpointName")
    v = res.Violations()
    if v.required(value, "endpointName"):
        res.validate_name(v, value, "endpointName")
    v.raise_if_any()
    return str(value)


def create_endpoint(call: Call) -> dict[str, Any]:
    name = _name(call)
    config_name = call.body.get("EndpointConfigName")
    v = res.Violations()
    if v.required(config_name, "endpointConfigName"):
        res.validate_name(v, config_name, "endpointConfigName")
    tags = call.body.get("Tags")
    if tags is not None:
        res.validate_tags(v, tags)
    v.raise_if_any()
    config = call.store.get(res.ENDPOINT_CONFIG, str(config_name))
    if config is None:
        raise res.not_found(res.ENDPOINT_CONFIG,
                            res.arn(call.region, res.ENDPOINT_CONFIG, str(config_name)))
    now = time.time()
    variants = [{"VariantName": pv["VariantName"],
                 "CurrentWeight": float(pv.get("InitialVariantWeight", 1.0)),
                 "DesiredWeight": float(pv.get("InitialVariantWeight", 1.0)),
                 "CurrentInstanceCount": 0,
                 "DesiredInstanceCount": int(pv.get("InitialInstanceCount", 1))}
                for pv in config.get("ProductionVariants", [])]
    arn = endpoint_arn(call.region, name)
    record: Record = {"EndpointName": name, "EndpointArn": arn,
                      "EndpointConfigName": str(config_name), "ProductionVariants": variants,
                      "EndpointStatus": CREATING, "CreationTime": now, "LastModifiedTime": now,
                      "Tags": list(tags or []), "Instances": []}
    if not call.store.insert(ENDPOINT, name, record):
        raise ValidationException(f'Cannot create already existing endpoint "{arn}".')
    return {"EndpointArn": arn}


def describe_endpoint(call: Call) -> dict[str, Any]:
    name = _name(call)
    deadline = time.monotonic() + DESCRIBE_SETTLE_SECONDS
    while True:
        record = call.store.get(ENDPOINT, name)
        if record is None:
            raise not_found(endpoint_arn(call.region, name))
        if record["EndpointStatus"] != CREATING or time.monotonic() >= deadline:
            return public(record)
        time.sleep(0.1)


def list_endpoints(call: Call) -> dict[str, Any]:
    from mainsail.control.api import _list  # the shared List* logic; api imports this module

    out = _list(call, ENDPOINT, "EndpointName", "EndpointArn", "Endpoints")
    status = call.body.get("StatusEquals")
    by_name = {r["EndpointName"]: r for r in call.store.list(ENDPOINT)}
    page = []
    for summary in out["Endpoints"]:
        record = by_name.get(summary["EndpointName"])
        if record is None or (status and record["EndpointStatus"] != status):
            continue
        page.append({**summary, "EndpointStatus": record["EndpointStatus"],
                     "LastModifiedTime": record["LastModifiedTime"]})
    out["Endpoints"] = page
    return out


def delete_endpoint(call: Call) -> dict[str, Any]:
    name = _name(call)

    def mark(record: Record) -> Record:
        record["EndpointStatus"] = DELETING
        record["LastModifiedTime"] = time.time()
        return record

    if call.store.update(ENDPOINT, name, mark) is None:
        raise not_found(endpoint_arn(call.region, name))
    return {}


OPERATIONS = {
    "CreateEndpoint": create_endpoint,
    "DescribeEndpoint": describe_endpoint,
    "ListEndpoints": list_endpoints,
    "DeleteEndpoint": delete_endpoint,
}


# -- runtime -----------------------------------------------------------------------------------


def _runtime_error(status: int, code: str, message: str, **extra: Any) -> Response:
    return Response(json.dumps({"message": message, **extra}), status_code=status,
                    media_type="application/json", headers={"X-Amzn-ErrorType": code})


def pick_instance(record: Record, rng: random.Random | None = None) -> dict[str, Any] | None:
    """A random instance of a variant drawn by CurrentWeight (``None`` when there is none)."""
    rng = rng or random.Random()
    instances = record.get("Instances", [])
    variants = [pv for pv in record.get("ProductionVariants", [])
                if any(i["variant"] == pv["VariantName"] for i in instances)]
    if not variants:
        return None
    weights = [float(pv.get("CurrentWeight", 1.0)) for pv in variants]
    if sum(weights) <= 0:
        weights = [1.0] * len(variants)
    variant = rng.choices(variants, weights=weights)[0]["VariantName"]
    chosen: dict[str, Any] = rng.choice([i for i in instances if i["variant"] == variant])
    return chosen


class Runtime:
    """The runtime API's ``route`` and the keep-alive client it forwards with (``aclose`` at exit)."""

    def __init__(self, store: StateStore, *, timeout: float = 60.0) -> None:
        self.clients: list[httpx.AsyncClient] = []
        self.route = _invocations_route(store, self.clients, timeout)

    async def aclose(self) -> None:
        while self.clients:
            await self.clients.pop().aclose()


def _invocations_route(store: StateStore, clients: list[httpx.AsyncClient],
                       timeout: float) -> Route:
    """``POST /endpoints/{name}/invocations`` forwarded to an instance of the endpoint."""

    async def invoke(request: Request) -> Response:
        from mainsail.control.api import region_of

        region = region_of(request.headers.get("authorization"))
        name = urllib.parse.unquote(request.path_params["name"])
        record = await run_in_threadpool(store.get, ENDPOINT, name)
        if record is None:
            return _runtime_error(400, "ValidationError",
                                  f"Endpoint {name} of account {res.ACCOUNT} not found.")
        if record["EndpointStatus"] != IN_SERVICE:
            return _runtime_error(400, "ValidationError",
                                  f"Endpoint {name} of account {res.ACCOUNT} is not in service "
                                  f"(status {record['EndpointStatus']}).")
        body = await request.body()
        if len(body) > MAX_PAYLOAD:
            return _runtime_error(400, "ValidationError",
                                  f"Request payload size exceeds the limit of {MAX_PAYLOAD} bytes.")
        instance = pick_instance(record)
        if instance is None:
            return _runtime_error(400, "ValidationError", f"Endpoint {name} has no instances.")
        if not clients:
            clients.append(httpx.AsyncClient(timeout=timeout))
        headers = {k: v for k, v in (("content-type", request.headers.get("content-type")),
                                     ("accept", request.headers.get("accept")),
                                     ("x-amzn-sagemaker-custom-attributes",
                                      request.headers.get("x-amzn-sagemaker-custom-attributes")))
                   if v is not None}
        log_arn = (f"arn:aws:logs:{region}:{res.ACCOUNT}:log-group:/aws/sagemaker/Endpoints/"
                   f"{name}")
        variant = str(instance["variant"])
        try:
            upstream = await clients[0].post(
                f"http://127.0.0.1:{int(instance['port'])}/invocations", content=body,
                headers=headers)
        except httpx.HTTPError as exc:
            return _runtime_error(424, "ModelError",
                                  f"Could not reach the instance of variant {variant}: {exc}",
                                  OriginalStatusCode=502, OriginalMessage=str(exc),
                                  LogStreamArn=log_arn)
        if not 200 <= upstream.status_code < 300:
            kind = "client" if upstream.status_code < 500 else "server"
            text = upstream.text
            return _runtime_error(
                424, "ModelError",
                f'Received {kind} error ({upstream.status_code}) from primary with message '
                f'"{text}". See {log_arn} in account {res.ACCOUNT} for more information.',
                OriginalStatusCode=upstream.status_code, OriginalMessage=text,
                LogStreamArn=log_arn, ErrorCode=f"{kind.upper()}_ERROR_FROM_MODEL")
        out_headers = {"x-Amzn-Invoked-Production-Variant": variant}
        custom = upstream.headers.get("x-amzn-sagemaker-custom-attributes")
        if custom is not None:
            out_headers["X-Amzn-SageMaker-Custom-Attributes"] = custom
        return Response(upstream.content, status_code=200, headers=out_headers,
                        media_type=upstream.headers.get("content-type",
                                                        "application/octet-stream"))

    return Route("/endpoints/{name:path}/invocations", invoke, methods=["POST"])
