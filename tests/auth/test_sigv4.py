"""SigV4 verification over generated requests: botocore signs (header signatures for every service,
signed ``aws-chunked`` bodies), a real server behind :class:`SignedRequests` checks; any change after
signing (secret, path, query, a signed header, the body, a chunk) is refused. And AWS's own published
chunked-upload example as a known answer."""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import string
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from mainsail.aws.auth import sigv4
from mainsail.aws.auth.credentials import AccessKey, KeyRing
from mainsail.aws.s3.files import S3Error
from mainsail.gateway.auth import SignedRequests
from tests.auth.signing import chunked_put, send, sign
from tests.conftest import ThreadedServer

KEY, SECRET = "AKIATEST000000000001", "test/secret+key="
KEYS = KeyRing({KEY: AccessKey(KEY, SECRET, "tester")})


async def echo(scope: Scope, receive: Receive, send_: Send) -> None:
    """Answers 200 with the body it read (through the gate's checks), or the S3 error a check raised."""
    body, status = bytearray(), 200
    try:
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
    except S3Error as exc:
        body, status = bytearray(exc.code.encode()), exc.status
    await send_({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send_({"type": "http.response.body", "body": bytes(body)})


@pytest.fixture(scope="module")
def gate() -> Iterator[str]:
    server = ThreadedServer(SignedRequests(echo, KEYS), lifespan="off")
    server.start()
    yield server.url
    server.stop()


SERVICES = {  # service: the headers that make the gate take a request for it
    "sagemaker": {"X-Amz-Target": "SageMaker.DescribeEndpoint", "Content-Type": "application/x-amz-json-1.1"},
    "logs": {"X-Amz-Target": "Logs_20140328.FilterLogEvents", "Content-Type": "application/x-amz-json-1.1"},
    "s3": {},
}
SEGMENT = st.text(string.ascii_letters + string.digits + "-_.~!$&'()*+,;=:@ %/?#[]é", min_size=1, max_size=12) \
    .filter(lambda s: s not in (".", ".."))
QUERY = st.lists(st.tuples(st.text(string.ascii_letters + "-_.~ &=+/", min_size=1, max_size=8),
                           st.text(string.printable.strip() + " ", max_size=12)), max_size=4)
HEADER_VALUE = st.text(string.ascii_letters + string.digits + " -_.,;:/=+", min_size=1, max_size=20) \
    .filter(lambda v: v.strip() != "")


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes, str]:
    service = draw(st.sampled_from(sorted(SERVICES)))
    method = "POST" if service != "s3" else draw(st.sampled_from(["GET", "PUT", "POST", "DELETE"]))
    segments = draw(st.lists(SEGMENT, min_size=1, max_size=4))
    path = "/" + "/".join(quote(s, safe="-_.~!$&'()*+,;=:@") for s in segments)
    pairs = draw(QUERY)
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)
    headers = dict(SERVICES[service])
    for index, value in enumerate(draw(st.lists(HEADER_VALUE, max_size=3))):
        headers[f"x-amz-meta-h{index}"] = value
    body = draw(st.binary(max_size=2048)) if method in ("PUT", "POST") else b""
    return method, path + (f"?{query}" if query else ""), headers, body, service


MUTATIONS = ["secret", "path", "query", "header", "body"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests(), mutation=st.sampled_from(MUTATIONS))
def test_a_request_botocore_signed_passes_and_any_change_is_refused(
        gate: str, request: tuple[str, str, dict[str, str], bytes, str], mutation: str) -> None:
    method, target, headers, body, service = request
    url = gate + target
    signed = sign(method, url, key=KEY, secret=SECRET, service=service, headers=headers, body=body)
    status, _, reply = send(url, method, signed, body)
    assert status == 200, reply
    assert reply == body  # the app reads the body the gate buffered or checked
    if mutation == "secret":
        signed = sign(method, url, key=KEY, secret=SECRET + "x", service=service, headers=headers, body=body)
    elif mutation == "path":
        url = gate + target.replace("/", "/x", 1)
    elif mutation == "query":
        url = url + ("&" if "?" in url else "?") + "added=1"
    elif mutation == "header":
        signed = {**signed, "X-Amz-Date": (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).strftime(
            "%Y%m%dT%H%M%SZ")}
    else:
        body = body + b"!"
    status, _, reply = send(url, method, signed, body)
    if mutation == "body" and service == "s3":
        assert (status, reply) == (400, b"XAmzContentSHA256Mismatch")
    else:
        assert status == 403, (mutation, reply)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=40_000), chunk_size=st.sampled_from([8192, 10_000, 65_536]),
       tamper=st.one_of(st.none(), st.integers(0, 5)))
def test_signed_chunked_bodies_are_checked_chunk_by_chunk(gate: str, data: bytes, chunk_size: int,
                                                          tamper: int | None) -> None:
    status, reply = chunked_put(f"{gate}/bucket/key", data, key=KEY, secret=SECRET, chunk_size=chunk_size,
                                tamper=tamper)
    chunks = -(-len(data) // chunk_size)
    if tamper is not None and tamper < chunks:
        assert (status, reply) == (403, b"SignatureDoesNotMatch")
    else:
        assert status == 200
        assert len(reply) > len(data)  # the framed body, passed on for the S3 API to decode


def test_aws_published_chunked_upload_example_verifies() -> None:
    """AWS S3 API reference, "Signature Calculations for the Authorization Header: Transferring Payload
    in Multiple Chunks", example PUT Object: the seed and the three chunk signatures it lists."""
    key = AccessKey("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "example")
    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    headers = [("host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
               ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
               ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
                "aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                f"x-amz-decoded-content-length;x-amz-storage-class,Signature={seed}"),
               ("x-amz-content-sha256", sigv4.STREAMING_SIGNED), ("content-encoding", "aws-chunked"),
               ("x-amz-decoded-content-length", "66560"), ("content-length", "66824")]
    signed = sigv4.parse(dict(headers), "")
    verified = sigv4.verify(signed, KeyRing({key.access_key_id: key}), method="PUT",
                            raw_path="/examplebucket/chunkObject.txt", query_string="", headers=headers,
                            payload_hash=sigv4.STREAMING_SIGNED, now=dt.datetime(2013, 5, 24, 0, 1, tzinfo=dt.UTC))
    chain = sigv4.ChunkSignatures(verified)
    chain.chunk("ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                hashlib.sha256(b"a" * 65536).hexdigest())
    chain.chunk("0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                hashlib.sha256(b"a" * 1024).hexdigest())
    chain.chunk("b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9", sigv4.EMPTY_SHA256)
    with pytest.raises(sigv4.AuthFailure):
        sigv4.ChunkSignatures(verified).chunk("b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
                                              hashlib.sha256(b"a" * 65536).hexdigest())


@pytest.mark.parametrize(("authorization", "kind"), [
    (None, "missing"),
    ("AWS AKIA:abc=", "unsupported"),
    ("Bearer token", "incomplete"),
    ("AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/s3/aws4_request, Signature=ab", "incomplete"),
    ("AWS4-HMAC-SHA256 Credential=AKIA/2026/us-east-1/s3, SignedHeaders=host, Signature=ab", "incomplete"),
])
def test_malformed_signatures_are_named(authorization: str | None, kind: str) -> None:
    headers = {"x-amz-date": "20260101T000000Z", **({"authorization": authorization} if authorization else {})}
    with pytest.raises(sigv4.AuthFailure) as exc:
        sigv4.parse(headers, "")
    assert exc.value.kind == kind


def test_an_expired_or_skewed_date_and_a_token_the_key_lacks_are_refused() -> None:
    headers = {"x-amz-date": "20260101T000000Z", "authorization": f"AWS4-HMAC-SHA256 Credential={KEY}/20260101/"
               "us-east-1/sagemaker/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"}
    signed = sigv4.parse(headers, "")
    args = {"method": "POST", "raw_path": "/", "query_string": "", "headers": [("host", "h")],
            "payload_hash": sigv4.EMPTY_SHA256}
    with pytest.raises(sigv4.AuthFailure) as exc:
        sigv4.verify(signed, KEYS, now=dt.datetime(2026, 1, 1, 0, 5, 1, tzinfo=dt.UTC), **args)  # type: ignore[arg-type]
    assert exc.value.kind == "skewed" and "Signature expired: 20260101T000000Z is now earlier than" in exc.value.detail
    with pytest.raises(sigv4.AuthFailure) as exc:
        sigv4.verify(signed, KEYS, now=dt.datetime(2026, 1, 1, 0, 4, 0, tzinfo=dt.UTC), **args)  # type: ignore[arg-type]
    assert exc.value.kind == "signature"  # within the skew: the signature itself is checked
    tokened = sigv4.parse({**headers, "x-amz-security-token": "abc"}, "")
    with pytest.raises(sigv4.AuthFailure) as exc:
        sigv4.verify(tokened, KEYS, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), **args)  # type: ignore[arg-type]
    assert exc.value.kind == "token"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(when=st.datetimes(min_value=dt.datetime(1000, 1, 2), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
       offset=st.integers(-23 * 60 - 59, 23 * 60 + 59))
def test_a_date_header_reads_as_its_utc_time_or_is_incomplete(when: dt.datetime, offset: int) -> None:
    """A signature dated by ``Date:`` (no ``X-Amz-Date``): any RFC 2822 date reads as its UTC time, or is an
    incomplete signature where that time has no ``YYYYMMDD`` (before year 1000, after 9999)."""
    aware = when.replace(microsecond=0, tzinfo=dt.timezone(dt.timedelta(minutes=offset)))
    headers = {"date": email.utils.format_datetime(aware), "authorization": f"AWS4-HMAC-SHA256 Credential={KEY}/"
               "20260101/us-east-1/s3/aws4_request, SignedHeaders=host;date, Signature=00"}
    try:
        utc = aware.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or utc.year < 1000:
        with pytest.raises(sigv4.AuthFailure) as exc:
            sigv4.parse(headers, "")
        assert exc.value.kind == "incomplete"
    else:
        assert sigv4.parse(headers, "").timestamp == utc.strftime(sigv4.AMZ_DATE)
