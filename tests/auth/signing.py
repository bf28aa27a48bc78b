"""Test-side signing: botocore's own SigV4 signer at a chosen time, and an ``aws-chunked`` body with
chunk signatures built as AWS's "Transferring Payload in Multiple Chunks" page describes (the seed is
botocore's signature; each chunk signs the previous signature and its data)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

EMPTY = hashlib.sha256(b"").hexdigest()


def sign(method: str, url: str, *, key: str, secret: str, service: str, region: str = "us-east-1",
         headers: dict[str, str] | None = None, body: bytes = b"", when: dt.datetime | None = None,
         payload: str | None = None) -> dict[str, str]:
    """The headers of a request signed by botocore's ``SigV4Auth`` (``S3SigV4Auth`` for s3) at ``when``
    (default now); ``payload`` sets ``x-amz-content-sha256`` (S3: the body's hash by default)."""
    given = dict(headers or {})
    if not any(name.lower() == "host" for name in given):
        given["Host"] = urlsplit(url).netloc
    request = AWSRequest(method=method, url=url, data=body, headers=given)
    if service == "s3":
        request.headers["X-Amz-Content-SHA256"] = payload or hashlib.sha256(body).hexdigest()
    elif payload is not None:
        request.headers["X-Amz-Content-SHA256"] = payload
    auth_class = S3SigV4Auth if service == "s3" else SigV4Auth
    auth = auth_class(Credentials(key, secret), service, region)
    stamp = (when or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    # add_auth with its clock replaced: the same steps, at the chosen time
    request.context["timestamp"] = stamp
    auth._modify_request_before_signing(request)
    if payload is not None:  # S3SigV4Auth puts the body's own hash there
        del request.headers["X-Amz-Content-SHA256"]
        request.headers["X-Amz-Content-SHA256"] = payload
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    auth._inject_signature_to_request(request, signature)
    return {k: v for k, v in request.headers.items()}


def send(url: str, method: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send exactly this request line, these headers and this body (no client-side normalization)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if "Content-Length" not in headers and "content-length" not in {k.lower() for k in headers}:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _chunk_signature(key: bytes, stamp: str, scope: str, previous: str, data: bytes) -> str:
    text = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, previous, EMPTY, hashlib.sha256(data).hexdigest()))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def chunked_put(url: str, data: bytes, *, key: str, secret: str, chunk_size: int = 8192,
                region: str = "us-east-1", tamper: int | None = None) -> tuple[int, bytes]:
    """PUT ``data`` to ``url`` as a signed ``aws-chunked`` body (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``);
    ``tamper``: flip a byte of that chunk after signing it."""
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    frame = [len(f"{len(c):x};chunk-signature=") + 64 + 2 + len(c) + 2 for c in chunks]
    headers = {"Host": urlsplit(url).netloc, "Content-Encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(data)), "Content-Length": str(sum(frame))}
    now = dt.datetime.now(dt.UTC)
    signed = sign("PUT", url, key=key, secret=secret, service="s3", region=region, headers=headers, when=now,
                  payload="STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    seed = signed["Authorization"].rsplit("Signature=", 1)[1]
    stamp, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{date}/{region}/s3/aws4_request"
    skey = signing_key(secret, date, region, "s3")
    body, previous = bytearray(), seed
    for index, chunk in enumerate(chunks):
        previous = _chunk_signature(skey, stamp, scope, previous, chunk)
        sent = bytes([chunk[0] ^ 1]) + chunk[1:] if tamper == index and chunk else chunk
        body += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + sent + b"\r\n"
    status, _, reply = send(url, "PUT", signed, bytes(body))
    return status, reply
