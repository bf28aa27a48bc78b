"""CloudWatch's three wire protocols over one operation core: smithy-rpc-v2-cbor (what boto3 speaks
today), AWS JSON 1.0 and the query protocol (form in, XML out). Requests become plain dicts in botocore's
member names, timestamps as epoch seconds (floats); results go back the same way. Both directions walk
botocore's model of the operation's input and output shapes, so no operation is written out by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import cbor2

from mainsail.aws.cloudwatch.errors import InvalidParameterValue
from mainsail.aws.errors import ControlError, SerializationException
from mainsail.aws.xmltext import xml_escape

TARGET_PREFIX = "GraniteServiceVersion20100801"
API_VERSION = "2010-08-01"
XML_NAMESPACE = "http://monitoring.amazonaws.com/doc/2010-08-01/"
CBOR_TYPE = "application/cbor"
JSON_TYPE = "application/x-amz-json-1.0"
XML_TYPE = "text/xml"


def query_params(body: bytes) -> dict[str, str]:
    """A form-encoded body as one value per name (the last one, as AWS reads repeats)."""
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def is_query_call(params: Mapping[str, str]) -> bool:
    """Whether a query-protocol call is CloudWatch's (its API version; STS has its own)."""
    return params.get("Version") == API_VERSION


# -- reading ------------------------------------------------------------------------------------------


def decode_cbor(body: bytes) -> Any:
    if not body:
        return {}
    try:
        return cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as exc:
        raise SerializationException(f"Request body is not valid CBOR: {exc}") from None


def decode_json(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise SerializationException("Request body is not valid JSON.") from None


def epoch(value: Any, path: str) -> float:
    """A timestamp as the protocols carry it (CBOR's tag 1 as a datetime, JSON's epoch number, the query
    protocol's ISO 8601 text) in epoch seconds."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParameterValue(f"Invalid timestamp {value!r} for parameter {path}.") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise SerializationException(f"Expected a timestamp at '{path}', found {type(value).__name__}.")


def document(shape: Any, value: Any, path: str = "") -> Any:
    """A CBOR or JSON input with its timestamps in epoch seconds and members the model does not know
    dropped (the model check, :class:`~mainsail.aws.shapes.InputCheck`, then checks the rest)."""
    kind = shape.type_name
    if kind == "structure" and isinstance(value, Mapping):
        return {name: document(member, value[name], f"{path}.{name}" if path else name)
                for name, member in shape.members.items() if value.get(name) is not None}
    if kind == "list" and isinstance(value, list):
        return [document(shape.member, item, f"{path}.{i}") for i, item in enumerate(value, 1) if item is not None]
    if kind == "map" and isinstance(value, Mapping):
        return {k: document(shape.value, v, f"{path}.{k}") for k, v in value.items()}
    if kind == "timestamp":
        return epoch(value, path)
    return value


def query_input(shape: Any, params: Mapping[str, str], prefix: str = "") -> Any:
    """The input of a query-protocol call (``MetricData.member.1.Dimensions.member.1.Name=...``) as the
    dict JSON would carry; None when nothing under ``prefix`` was sent."""
    kind = shape.type_name
    if kind == "structure":
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            key = member.serialization.get("name", name)
            value = query_input(member, params, f"{prefix}.{key}" if prefix else key)
            if value is not None:
                out[name] = value
        return out if out or not prefix else None
    if kind == "list":
        name = shape.member.serialization.get("name", "member")
        items: list[Any] = []
        while (item := query_input(shape.member, params, f"{prefix}.{name}.{len(items) + 1}")) is not None:
            items.append(item)
        if items:
            return items
        return [] if params.get(prefix) == "" else None  # botocore sends ``Name=`` for []
    if kind == "map":
        entries: dict[str, Any] = {}
        while (key := params.get(f"{prefix}.entry.{len(entries) + 1}.key")) is not None:
            entries[key] = query_input(shape.value, params, f"{prefix}.entry.{len(entries) + 1}.value")
        return entries or None
    raw = params.get(prefix)
    if raw is None:
        return None
    return _query_scalar(kind, raw, prefix)


def _query_scalar(kind: str, raw: str, path: str) -> Any:
    try:
        if kind in ("integer", "long"):
            return int(raw)
        if kind in ("float", "double"):
            return float(raw)
    except ValueError:
        raise InvalidParameterValue(f"Invalid value {raw!r} for parameter {path}: not a number.") from None
    if kind == "boolean":
        if raw.lower() not in ("true", "false"):
            raise InvalidParameterValue(f"Invalid value {raw!r} for parameter {path}: not a boolean.")
        return raw.lower() == "true"
    if kind == "timestamp":
        return epoch(raw, path)
    return raw


# -- writing ------------------------------------------------------------------------------------------


def plain(shape: Any, value: Any, cbor: bool) -> Any:
    """An output for CBOR (timestamps as tag 1) or JSON (timestamps as epoch numbers), members the model
    does not know dropped."""
    kind = shape.type_name
    if kind == "structure":
        return {name: plain(member, value[name], cbor) for name, member in shape.members.items()
                if value.get(name) is not None}
    if kind == "list":
        return [plain(shape.member, item, cbor) for item in value]
    if kind == "map":
        return {k: plain(shape.value, v, cbor) for k, v in value.items()}
    if kind == "timestamp":
        return cbor2.CBORTag(1, float(value)) if cbor else float(value)
    if kind in ("float", "double") and not cbor and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return value


def encode_cbor(shape: Any, result: Mapping[str, Any]) -> bytes:
    return cbor2.dumps(plain(shape, result, True) if shape is not None else {})


def encode_json(shape: Any, result: Mapping[str, Any]) -> bytes:
    return json.dumps(plain(shape, result, False) if shape is not None else {}).encode()


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def xml(shape: Any, value: Any) -> str:
    """``value`` as the query protocol's XML content of an element of ``shape``."""
    kind = shape.type_name
    if kind == "structure":
        parts = []
        for name, member in shape.members.items():
            if value.get(name) is not None:
                tag = member.serialization.get("name", name)
                parts.append(f"<{tag}>{xml(member, value[name])}</{tag}>")
        return "".join(parts)
    if kind == "list":
        tag = shape.member.serialization.get("name", "member")
        return "".join(f"<{tag}>{xml(shape.member, item)}</{tag}>" for item in value)
    if kind == "map":
        return "".join(f"<entry><key>{xml_escape(str(k))}</key><value>{xml(shape.value, v)}</value></entry>"
                       for k, v in value.items())
    if kind == "timestamp":
        return _iso(float(value))
    if kind == "boolean":
        return "true" if value else "false"
    if kind in ("float", "double"):
        return repr(float(value))
    return xml_escape(str(value))


def encode_xml(operation: str, shape: Any, result: Mapping[str, Any], request_id: str) -> bytes:
    result_xml = f"<{operation}Result>{xml(shape, result)}</{operation}Result>" if shape is not None else ""
    return (f'<{operation}Response xmlns="{XML_NAMESPACE}">{result_xml}'
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            f"</{operation}Response>").encode()


def encode_xml_error(code: str, sender: bool, message: str, request_id: str) -> bytes:
    return (f'<ErrorResponse xmlns="{XML_NAMESPACE}"><Error><Type>{"Sender" if sender else "Receiver"}</Type>'
            f"<Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>").encode()


def encode_error(type_: str, exc: ControlError, cbor: bool) -> bytes:
    """The body of a CBOR or JSON error: smithy's ``__type`` (the error shape's id) and ``message``."""
    document = {"__type": type_, "message": exc.message}
    return cbor2.dumps(document) if cbor else json.dumps(document).encode()
