"""Every SageMaker operation mainsail serves, checked against botocore's model of the API: the cases
are generated from the model, not written by hand, so a constraint the next operation (or the next
botocore) brings is tested without anyone listing it.

- **Refused as SageMaker refuses**: for each constrained member (required, enum, string length,
  number range, pattern, list length) a request that breaks just that constraint answers a
  ValidationException naming the member and the constraint.
- **Accepted as SageMaker accepts**: each enum value of each member (``SortBy=Status`` included), and
  each number at the bounds of its range, gets past validation (whatever the operation then says of
  it, it is not a constraint failure of that member) and never a 500.
- A member of the wrong JSON type is a SerializationException, not a 500.

The requests go through the real boto3 client with its own parameter validation off
(``parameter_validation=False``), as a client built from another SDK's model would send them."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.exceptions import ClientError

from mainsail.aws.logs.api import LogsApi
from mainsail.gateway.app import OPERATIONS
from tests.control.helpers import Plane

_session = botocore.session.Session()
MODELS = {"sagemaker": _session.get_service_model("sagemaker"), "logs": _session.get_service_model("logs")}
#: the operations mainsail serves, and the error each service answers a constraint failure with
SERVED = {"sagemaker": sorted(OPERATIONS), "logs": sorted(LogsApi.OPERATIONS)}
REFUSAL = {"sagemaker": "ValidationException", "logs": "InvalidParameterException"}
_names = itertools.count()


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # a Java-only construct (\p{L} ...): the value generator does not try to match it
        return None


_CANDIDATES = ("x{n}", "ml.m5.large", "s3://bucket/key{n}", "arn:aws:sagemaker:us-east-1:123456789012:model/x{n}",
               "arn:aws:iam::123456789012:role/R{n}", "1", "a")


def valid(shape: Any, depth: int = 0) -> Any:
    """A value the model's constraints accept (fresh names, so that Create* calls never collide)."""
    kind, meta = shape.type_name, shape.metadata
    if kind == "structure":
        return {m: valid(shape.members[m], depth + 1) for m in shape.required_members} if depth < 6 else {}
    if kind == "list":
        return [valid(shape.member, depth + 1) for _ in range(max(meta.get("min", 0), 1))]
    if kind == "map":
        return {}
    if kind in ("integer", "long", "float", "double"):
        return meta.get("min", 1)
    if kind == "boolean":
        return False
    if kind == "timestamp":
        return 0
    if kind == "blob":
        return ""
    if meta.get("enum"):
        return meta["enum"][0]
    low, high = meta.get("min", 0), meta.get("max", 10_000)
    pattern = _compiled(meta["pattern"]) if meta.get("pattern") else None
    n = next(_names)
    for template in _CANDIDATES:
        value = template.format(n=n)
        value = value + "x" * max(0, low - len(value))
        if len(value) <= high and (pattern is None or pattern.fullmatch(value)):
            return value
    return "x" * max(low, 1)


@dataclass(frozen=True)
class Member:
    """A member of an operation's input, with the path errors name it by and how to reach it."""

    service: str
    operation: str
    path: str  # as SageMaker's messages write it: productionVariants.1.member.serverlessConfig.memorySizeInMB
    keys: tuple[str, ...]  # the members from the input down to it (a list is entered at its first item)
    shape: Any

    def body(self, value: Any, *, omit: bool = False) -> dict[str, Any]:
        """A valid input with this member set to ``value`` (or left out)."""
        top = MODELS[self.service].operation_model(self.operation).input_shape
        body = valid(top)
        node, shape = body, top
        for i, key in enumerate(self.keys):
            last = i == len(self.keys) - 1
            member = shape.members[key]
            if last:
                if omit:
                    node.pop(key, None)
                else:
                    node[key] = value
                break
            if member.type_name == "list":
                item = node.get(key) or [valid(member.member)]
                node[key] = item
                node, shape = item[0], member.member
            else:
                node = node.setdefault(key, valid(member))
                shape = member
        return body


def members(service: str, operation: str) -> Iterator[tuple[Member, bool]]:
    """Every member of the operation's input under structures and lists (not maps), to a bounded
    depth, with whether it is required by its parent."""
    top = MODELS[service].operation_model(operation).input_shape
    if top is None:
        return

    def walk(shape: Any, path: str, keys: tuple[str, ...], seen: tuple[str, ...]) -> Iterator[tuple[Member, bool]]:
        for key, member in shape.members.items():
            sub = f"{path}.{_lower_first(key)}" if path else _lower_first(key)
            yield Member(service, operation, sub, (*keys, key), member), key in shape.required_members
            inner, inner_path = member, sub
            if member.type_name == "list":
                inner, inner_path = member.member, f"{sub}.1.member"
            if inner.type_name == "structure" and inner.name not in seen and len(seen) < 4:
                yield from walk(inner, inner_path, (*keys, key), (*seen, inner.name))

    yield from walk(top, "", (), (top.name,))


def violations(service: str) -> Iterator[tuple[Member, Any, str, bool]]:
    """(member, bad value, the constraint message it must draw, omit the member instead)."""
    for operation in SERVED[service]:
        for member, required in members(service, operation):
            shape, meta = member.shape, member.shape.metadata
            kind = shape.type_name
            if required:
                yield member, None, "Member must not be null", True
            if kind == "string":
                if meta.get("enum"):
                    yield member, "NotAValue", "Member must satisfy enum value set: [", False
                if meta.get("max") is not None and meta["max"] <= 100_000 and not meta.get("enum"):
                    yield member, "x" * (meta["max"] + 1), f"Member must have length less than or equal to {meta['max']}", False
                if meta.get("min") and not meta.get("enum"):
                    yield member, "", f"Member must have length greater than or equal to {meta['min']}", False
                pattern = _compiled(meta["pattern"]) if meta.get("pattern") else None
                if pattern is not None and not meta.get("enum"):
                    bad = next((b for b in ("\x01", "!\x01 ", "\n") if not pattern.fullmatch(b)), None)
                    if bad is not None:
                        yield member, bad, "Member must satisfy regular expression pattern: ", False
            elif kind in ("integer", "long", "float", "double"):
                if meta.get("min") is not None:
                    yield member, meta["min"] - 1, "Member must have value greater than or equal to", False
                if meta.get("max") is not None:
                    yield member, meta["max"] + 1, "Member must have value less than or equal to", False
            elif kind == "list":
                if meta.get("max") is not None and meta["max"] <= 1000:
                    item = valid(shape.member)
                    yield member, [item] * (meta["max"] + 1), "Member must have length less than or equal to", False
                if meta.get("min"):
                    yield member, [], "Member must have length greater than or equal to", False


def acceptances(service: str) -> Iterator[tuple[Member, Any]]:
    """(member, a value its constraints accept): every enum value, every range bound."""
    for operation in SERVED[service]:
        for member, _ in members(service, operation):
            meta = member.shape.metadata
            if member.shape.type_name == "string" and meta.get("enum"):
                values = meta["enum"]
                # InstanceType's hundreds of values: each family once is enough
                if len(values) > 40:
                    values = list({v.rsplit(".", 1)[0]: v for v in values}.values())
                for value in values:
                    yield member, value
            elif member.shape.type_name in ("integer", "long", "float", "double"):
                for bound in ("min", "max"):
                    if meta.get(bound) is not None:
                        yield member, meta[bound]


def _error(client: Any, operation: str, body: dict[str, Any]) -> tuple[str, str]:
    method = getattr(client, botocore.xform_name(operation))
    try:
        method(**body)
    except ClientError as exc:
        return exc.response["Error"]["Code"], exc.response["Error"].get("Message", "")
    return "", ""


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    with Plane(tmp_path_factory.mktemp("plane")) as plane:
        yield plane


@pytest.fixture
def sm(plane: Plane) -> Any:
    return plane.client("sagemaker", parameter_validation=False)


def test_every_served_operation_is_in_the_model() -> None:
    for service, served in SERVED.items():
        assert set(served) <= set(MODELS[service].operation_names)


@pytest.mark.parametrize("service", SERVED)
def test_each_constraint_of_the_model_is_enforced(plane: Plane, service: str) -> None:
    client = plane.client(service, parameter_validation=False)
    missed = []
    cases = list(violations(service))
    assert len(cases) > (150 if service == "sagemaker" else 20)  # the generator found the model's constraints
    for member, value, constraint, omit in cases:
        code, message = _error(client, member.operation, member.body(value, omit=omit))
        expected = f"at '{member.path}' failed to satisfy constraint: {constraint}"
        if code != REFUSAL[service] or expected not in message:
            missed.append(f"{member.operation} {member.path}={value!r:.40}: {code} {message[:200]}")
    assert not missed, f"{len(missed)} of {len(cases)} constraint violations not refused:\n" + "\n".join(missed)


@pytest.mark.parametrize("service", SERVED)
def test_each_value_the_model_allows_is_accepted(plane: Plane, service: str) -> None:
    client = plane.client(service, parameter_validation=False)
    refused = []
    cases = list(acceptances(service))
    assert len(cases) > (100 if service == "sagemaker" else 5)
    for member, value in cases:
        code, message = _error(client, member.operation, member.body(value))
        if code in ("InternalFailure", "InternalServerError", "ServiceUnavailableException") \
                or f"at '{member.path}' failed" in message:
            refused.append(f"{member.operation} {member.path}={value!r}: {code} {message[:200]}")
    assert not refused, f"{len(refused)} of {len(cases)} allowed values refused:\n" + "\n".join(refused)


@pytest.mark.parametrize(("operation", "body", "where"), [
    ("ListEndpoints", {"MaxResults": "ten"}, "maxResults"),
    ("CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": {"VariantName": "v"}},
     "productionVariants"),
    ("DescribeEndpoint", {"EndpointName": 7}, "endpointName"),
    ("CreateModel", {"ModelName": "m", "EnableNetworkIsolation": "yes"}, "enableNetworkIsolation"),
    ("ListEndpoints", [], "the input"),
])
def test_a_member_of_the_wrong_type_is_a_serialization_error(sm: Any, operation: str, body: Any,
                                                              where: str) -> None:
    r = httpx.post(sm.meta.endpoint_url, json=body, headers={
        "X-Amz-Target": f"SageMaker.{operation}", "Content-Type": "application/x-amz-json-1.1"})
    assert r.status_code == 400 and r.json()["__type"] == "SerializationException", r.text
    if where != "the input":
        assert f"'{where}'" in r.json()["Message"]


def test_serverless_memory_comes_in_1024_mb_steps(sm: Any) -> None:
    """The model's range is 1024-6144; SageMaker also refuses what is not a whole number of GB."""
    variant = {"VariantName": "v", "ModelName": "m", "ServerlessConfig": {"MemorySizeInMB": 1111, "MaxConcurrency": 1}}
    code, message = _error(sm, "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": [variant]})
    assert code == "ValidationException"
    assert "'productionVariants.1.member.serverlessConfig.memorySizeInMB'" in message and "1024, 2048" in message


def test_weights_and_capacities_name_each_variant_once(sm: Any) -> None:
    code, message = _error(sm, "UpdateEndpointWeightsAndCapacities", {
        "EndpointName": "e", "DesiredWeightsAndCapacities": [
            {"VariantName": "a", "DesiredWeight": 1.0}, {"VariantName": "a", "DesiredWeight": 2.0}]})
    assert code == "ValidationException" and "[a]" in message and "unique" in message


def test_json_nested_deeper_than_the_parser_goes_is_a_serialization_error(sm: Any) -> None:
    for body in (b"[" * 100_000, b'{"a":' * 100_000):
        r = httpx.post(sm.meta.endpoint_url, content=body, headers={
            "X-Amz-Target": "SageMaker.ListEndpoints", "Content-Type": "application/x-amz-json-1.1"})
        assert r.status_code == 400 and r.json()["__type"] == "SerializationException", r.text


RUNTIME = _session.get_service_model("sagemaker-runtime")
RUNTIME_PATHS = {"InvokeEndpoint": "invocations", "InvokeEndpointWithResponseStream": "invocations-response-stream",
                 "InvokeEndpointAsync": "async-invocations"}


def runtime_headers() -> Iterator[tuple[str, str, str, Any]]:
    """(operation, header, member path, shape) of each string member the runtime API takes from a header."""
    for operation in RUNTIME_PATHS:
        for name, member in RUNTIME.operation_model(operation).input_shape.members.items():
            if member.serialization.get("location") == "header" and member.type_name == "string":
                yield operation, member.serialization["name"], _lower_first(name), member


def _runtime(plane: Plane, operation: str, header: str, value: str) -> httpx.Response:
    return httpx.post(f"{plane.url}/endpoints/none/{RUNTIME_PATHS[operation]}", content=b"1",
                      headers={header: value, "X-Amzn-SageMaker-InputLocation": "s3://b/k"}
                      if header != "X-Amzn-SageMaker-InputLocation" else {header: value})


def test_the_runtime_api_checks_its_headers_against_the_model(plane: Plane) -> None:
    """Each header broken alone (too long, outside its pattern) is refused before anything else is looked at
    (the endpoint does not exist); each valid value gets past the check (to "not found")."""
    missed, cases = [], 0
    for operation, header, path, shape in runtime_headers():
        meta = shape.metadata
        bad: list[tuple[str, str]] = []
        if meta.get("max") is not None:
            bad.append(("x" * (meta["max"] + 1), "Member must have length less than or equal to"))
        pattern = _compiled(meta["pattern"].replace("\\z", "\\Z")) if meta.get("pattern") else None
        if pattern is not None:
            wrong = next((b for b in ("-x", "x-", "a b", "x!y", "x\x7fy") if not pattern.fullmatch(b)), None)
            if wrong is not None:
                bad.append((wrong, "Member must satisfy regular expression pattern"))
        for value, constraint in bad:
            cases += 1
            r = _runtime(plane, operation, header, value)
            if r.status_code != 400 or f"at '{path}' failed to satisfy constraint: {constraint}" not in r.text:
                missed.append(f"{operation} {header}={value[:20]!r}: {r.status_code} {r.text[:200]}")
        good = valid(shape)
        r = _runtime(plane, operation, header, good)
        if f"at '{path}' failed" in r.text or "not found" not in r.text:
            missed.append(f"{operation} {header}={good!r} (valid): {r.status_code} {r.text[:200]}")
    assert cases > 20
    assert not missed, "\n".join(missed)
