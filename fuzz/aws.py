"""Targets for the control plane's AWS protocols: JSON 1.1 bodies (SageMaker, CloudWatch Logs), the query
protocol (STS), SigV4 signatures (header and presigned) and the event-stream encoder."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import uuid
import xml.etree.ElementTree as ET
from typing import Any

from botocore.eventstream import EventStreamBuffer

from fuzz import Target, Violation, check, scratch
from fuzz.inputs import Reader, http_request
from mainsail.aws import eventstream
from mainsail.aws.auth import sigv4
from mainsail.aws.auth.credentials import AccessKey, KeyRing
from mainsail.aws.errors import ControlError, SerializationException
from mainsail.aws.logs.api import TARGET_PREFIX, LogsApi
from mainsail.aws.protocol import json_body
from mainsail.aws.sts import handle, is_query_call
from mainsail.gateway.app import SAGEMAKER_INPUTS
from mainsail.gateway.auth import Service, SignedRequests

REGION = "us-east-1"
SECRET = "fuzz/secret+key="
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# -- AWS JSON 1.1 ------------------------------------------------------------------------------------

SAGEMAKER_OPERATIONS = ("CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpointWeightsAndCapacities",
                        "CreateTransformJob", "ListEndpoints", "DescribeEndpoint", "AddTags", "NoSuchOperation")
LOGS_OPERATIONS = ("FilterLogEvents", "GetLogEvents", "DescribeLogStreams", "DescribeLogGroups", "PutLogEvents")
LOG_LINES = b"2026-01-01 00:00:00,000 INFO start\nplain line\n2026-01-01 00:00:01,500 ERROR boom \xff\n  tail\n"


@functools.cache
def _logs() -> LogsApi:
    home = scratch("logs")
    for endpoint, name in (("ep-1", "AllTraffic-0-8080.log"), ("ep-1", "AllTraffic-1-8081.log"), ("b", "v-0-1.log")):
        (home / "logs" / endpoint).mkdir(parents=True, exist_ok=True)
        (home / "logs" / endpoint / name).write_bytes(LOG_LINES)
    return LogsApi(home)


def json11(data: bytes) -> None:
    reader = Reader(data)
    operation = reader.pick(LOGS_OPERATIONS)
    sagemaker_operation = reader.pick(SAGEMAKER_OPERATIONS)
    body = reader.rest()
    try:
        parsed: Any = json_body(body)
    except SerializationException:
        parsed = None
    check(parsed is None or isinstance(parsed, dict), "json_body gives an object")
    if parsed is not None:  # the SageMaker dispatcher checks the input against botocore's model first
        try:
            SAGEMAKER_INPUTS.check(sagemaker_operation, parsed)
        except ControlError as exc:
            check(exc.status_code == 400, f"{type(exc).__name__} answers {exc.status_code}")
    # the gateway reads the same (signed) body for the resources the key's policy is checked against
    for service in (Service("json", "sagemaker", "CreateEndpoint"), Service("json", "logs", operation)):
        SignedRequests._requests(service, "/", body, REGION)
    try:
        _logs().call(TARGET_PREFIX + operation, body, REGION)
    except ControlError as exc:
        check(exc.status_code == 400, f"{type(exc).__name__} answers {exc.status_code}")


def _json11_seeds() -> list[bytes]:
    group = b'"logGroupName": "/aws/sagemaker/Endpoints/ep-1"'
    create_model = (b'{"ModelName": "m-1", "ExecutionRoleArn": "arn:aws:iam::123456789012:role/r", "PrimaryContainer": '
                    b'{"Image": "img:1", "ModelDataUrl": "s3://b/model.tar.gz", "Environment": {"A": "1"}}, '
                    b'"Tags": [{"Key": "k", "Value": "v"}]}')
    config = (b'{"EndpointConfigName": "c", "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m-1", '
              b'"InitialInstanceCount": 1, "InstanceType": "ml.m5.large", "InitialVariantWeight": 1.0}]}')
    logs = [b"\0\7{" + group + b', "filterPattern": "?ERROR -\\"x y\\"", "limit": 2, "startTime": 0}',
            b"\1\7{" + group + b', "logStreamName": "AllTraffic/i-0-8080", "startFromHead": true, "limit": 1}',
            b"\2\7{" + group + b', "orderBy": "LastEventTime", "descending": true}',
            b'\3\7{"logGroupNamePrefix": "/aws", "limit": 1, "nextToken": "eyJpIjoxfQ=="}', b"\4\7", b"\0\7[]",
            b"\2\7{" + group + b', "nextToken": "' + base64.urlsafe_b64encode(b"[" * 1100 + b"]" * 1100) + b'"}']
    sagemaker = [b"\4\0" + create_model, b"\4\1" + config,
                 b'\4\3{"EndpointName": "e", "DesiredWeightsAndCapacities": [{"VariantName": "v", '
                 b'"DesiredWeight": 0.5, "DesiredInstanceCount": 2}]}',
                 b'\4\5{"MaxResults": 10, "SortBy": "Status", "StatusEquals": "InService", "NameContains": "x"}']
    return logs + sagemaker


# -- the query protocol (STS) ----------------------------------------------------------------------


def sts_query(data: bytes) -> None:
    reader = Reader(data)
    content_type = reader.text()
    caller = reader.pick((None, AccessKey("AKIAFUZZ", SECRET, "fuzz<&>user")))
    body = reader.rest()
    is_query_call(content_type)
    response = handle(body, "0000-request-id", caller)
    check(response.status_code in (200, 400), f"STS answers {response.status_code}")
    try:
        ET.fromstring(bytes(response.body))
    except ET.ParseError as exc:
        raise Violation(f"STS answers XML that is not well-formed ({exc}): {bytes(response.body)[:300]!r}") from None


def _sts_seeds() -> list[bytes]:
    form = b"\x21application/x-www-form-urlencoded"
    return [form + b"\0Action=GetCallerIdentity&Version=2011-06-15", form + b"\1Action=GetCallerIdentity",
            form + b"\0Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3A%3C", form + b"\0Version=1&Action"]


# -- SigV4 -----------------------------------------------------------------------------------------


def sigv4_parse(data: bytes) -> None:
    """An HTTP request (see :func:`fuzz.inputs.http_request`), its body the clock's offset in seconds."""
    method, path, query, header_list, body = http_request(data)
    headers: dict[str, str] = {}
    for name, value in header_list:
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    try:
        signed = sigv4.parse(headers, query)
    except sigv4.AuthFailure:
        return
    key = AccessKey(signed.access_key_id, SECRET, "fuzz", session_token=signed.token)
    offset = int.from_bytes(body[:4].ljust(4, b"\0"), "big", signed=True)
    try:
        verified = sigv4.verify(signed, KeyRing({key.access_key_id: key}), method=method, raw_path=path,
                                query_string=query, headers=header_list, payload_hash=sigv4.UNSIGNED_PAYLOAD,
                                now=NOW + dt.timedelta(seconds=offset))
    except sigv4.AuthFailure:
        return
    chain = sigv4.ChunkSignatures(verified)
    for signature in (verified.signed.signature, body[4:].decode("latin-1")):
        try:
            chain.chunk(signature, sigv4.EMPTY_SHA256)
        except sigv4.AuthFailure:
            pass


def _sigv4_seeds() -> list[bytes]:
    from botocore.auth import HmacV1QueryAuth, S3SigV4Auth, SigV4Auth, SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    credentials = Credentials("AKIAFUZZ", SECRET)
    seeds = []
    for auth, url in ((SigV4Auth(credentials, "sagemaker", REGION), "http://h:8080/"),
                      (S3SigV4Auth(credentials, "s3", REGION), "http://h:8080/bucket/a%20key?x=1&y"),
                      (SigV4QueryAuth(credentials, "s3", REGION, expires=600), "http://h:8080/bucket/key"),
                      (HmacV1QueryAuth(credentials, expires=1767225900), "http://h:8080/bucket/key")):
        request = AWSRequest(method="GET", url=url, headers={"Host": "h:8080"})
        request.context["timestamp"] = NOW.strftime(sigv4.AMZ_DATE)
        if isinstance(auth, HmacV1QueryAuth):
            auth._get_date = lambda: "1767225900"
            auth.add_auth(request)
        else:
            auth._modify_request_before_signing(request)
            signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
            auth._inject_signature_to_request(request, signature)
        target = request.url.split("h:8080", 1)[1]
        lines = [f"GET {target}", *(f"{name}: {value}" for name, value in request.headers.items())]
        seeds.append("\n".join(lines).encode("latin-1") + b"\n\n\0\0\0\0")
    seeds.append(b"GET /\nauthorization: AWS4-HMAC-SHA256 Credential=A/20260101/us-east-1/s3/aws4_request, "
                 b"SignedHeaders=host;date, Signature=ab\ndate: Thu, 01 Jan 2026 00:00:00 +0100\n\n")
    return seeds


# -- the event-stream encoder ------------------------------------------------------------------------

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MS_FIRST, MS_LAST = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 to 9999-12-31T23:59:59.999Z
INTEGER_SIZES = ((1, -(2**7)), (2, -(2**15)), (4, -(2**31)), (8, -(2**63)), (9, -(2**64)))


def _header_value(reader: Reader) -> tuple[eventstream.HeaderValue, object]:
    """A header value and what botocore's decoder must give for it."""
    kind = reader.u8() % 7
    if kind == 0:
        flag = reader.flag()
        return flag, flag
    if kind == 1:
        size, low = reader.pick(INTEGER_SIZES)
        number = reader.uint(size) + low
        return number, number
    if kind == 2:
        text = reader.chunk().decode("utf-8", "replace") * (1 + reader.u8() % 4 * 90)
        return text, text
    if kind == 3:
        raw = reader.chunk() * (1 + reader.u8() % 4 * 90)
        return raw, raw
    if kind == 4:
        ms = MS_FIRST + reader.uint(6) % (MS_LAST - MS_FIRST + 1)
        when = EPOCH + dt.timedelta(milliseconds=ms)
        return when, ms
    if kind == 5:
        value = uuid.UUID(bytes=reader.take(16).ljust(16, b"\0"))
        return value, value.bytes
    number = -(2**63) + reader.uint(1)
    return number, number


def _refusable(headers: list[tuple[str, eventstream.HeaderValue]]) -> bool:
    """Whether the format cannot carry ``headers`` (the payload here is never too large): a name given
    twice, a name of 0 or over 255 bytes, a string or byte array over 65535 bytes, an integer beyond 64 bits, or over
    ``MAX_HEADERS`` bytes of headers in all."""
    if len({name for name, _ in headers}) != len(headers):
        return True
    total = 0
    for name, value in headers:
        raw = value.encode() if isinstance(value, str) else value
        if not 0 < len(name.encode()) < 256:
            return True
        if isinstance(raw, bytes) and len(raw) > 65535:
            return True
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            return True
        total += 1 + len(name.encode()) + 1 + _value_size(value)
    return total > eventstream.MAX_HEADERS


def _value_size(value: eventstream.HeaderValue) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return next(size for size, low in INTEGER_SIZES if low <= value < -low)
    if isinstance(value, (str, bytes)):
        return 2 + len(value.encode() if isinstance(value, str) else value)
    return 8 if isinstance(value, dt.datetime) else 16


def eventstream_encode(data: bytes) -> None:
    reader = Reader(data)
    headers: list[tuple[str, eventstream.HeaderValue]] = []
    expected: dict[str, object] = {}
    for _ in range(reader.u8() % 8):
        name = reader.chunk().decode("utf-8", "replace")
        value, decoded = _header_value(reader)
        headers.append((name, value))
        expected[name] = decoded
    payload = reader.rest()
    try:
        message = eventstream.encode_message(headers, payload)
    except ValueError as exc:
        check(_refusable(headers), f"encode_message refuses what the format carries: {exc}")
        return
    buffer = EventStreamBuffer()
    buffer.add_data(message)
    decoded_messages = list(buffer)
    check(len(decoded_messages) == 1, f"one message decodes as {len(decoded_messages)}")
    (got,) = decoded_messages
    check(got.payload == payload, "the payload comes back")
    check(got.headers == expected, f"headers {got.headers!r} decode, {expected!r} were written")


def _eventstream_seeds() -> list[bytes]:
    return [b"\3\x0b:event-type\2\x0bPayloadPart\0\x0d:content-type\2\x18application/octet-stream\0"
            b"\x0d:message-type\2\x05event\0payload bytes",
            b"\2\1n\1\3\x7f\xff\xff\xff\1t\4\0\0\x01\x8b\x2a\x3b\x4c\x5d", b"\1\x03uid\5" + bytes(range(16)),
            b"\1\1b\0\1"]


TARGETS = [
    Target("json11", json11, "json_body gives an object or raises SerializationException; the gateway's policy "
           "read of the body never raises; CloudWatch Logs operations answer or raise a 400 ControlError",
           _json11_seeds),
    Target("sts_query", sts_query, "STS answers 200 or 400 with well-formed XML; nothing raises", _sts_seeds),
    Target("sigv4", sigv4_parse, "parse, verify (with the request's key known) and chunk signatures raise only "
           "AuthFailure", _sigv4_seeds),
    Target("eventstream", eventstream_encode, "encode_message refuses (ValueError) only what the format cannot "
           "carry; what it writes botocore's EventStreamBuffer decodes to the same headers and payload",
           _eventstream_seeds, max_len=8192),
]
