"""S3's REST/XML API, path style (``PUT /bucket/key``), as botocore sends it to a custom endpoint.

Served by ``mainsail up`` on its own port beside the SageMaker API (see :func:`s3_routes`); the
storage is :class:`mainsail.aws.s3.store.S3Store`. Requests are not authenticated (any
credentials work). Bodies are streamed to disk (``aws-chunked`` bodies decoded, their trailing
checksum checked) and objects are streamed back from disk, with ranges.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO
from urllib.parse import parse_qs, quote, unquote

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Message, Receive, Scope, Send

from mainsail.aws.s3.store import (
    CHECKSUMS,
    DEFAULT_REGION,
    MAX_PART_NUMBER,
    ObjectMeta,
    S3Error,
    S3Store,
    TempFile,
)

logger = logging.getLogger(__name__)

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
OWNER_ID = "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a"
XML_LIMIT = 4 * 1024 * 1024
FLUSH_BYTES = 1 << 20
STORED_HEADERS = ("Content-Encoding", "Content-Disposition", "Content-Language", "Cache-Control", "Expires")
_CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/")
_INVOCATIONS_RE = re.compile(r"/endpoints/.+/invocations")
_S3_QUERY = ("uploads", "uploadId", "delete")
_UNSUPPORTED = ("acl", "policy", "tagging", "versioning", "cors", "lifecycle", "website", "logging",
                "notification", "replication", "encryption", "versions", "object-lock", "retention",
                "legal-hold", "torrent", "restore", "select", "attributes", "ownershipControls",
                "publicAccessBlock", "accelerate", "requestPayment", "analytics", "metrics", "inventory",
                "intelligent-tiering")


# -- XML and responses ---------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _el(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def _xml(root: ET.Element, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


def _root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=NS)


def error_response(exc: S3Error, request_id: str, method: str, resource: str = "") -> Response:
    headers = {"x-amz-request-id": request_id, "x-amz-id-2": request_id}
    if method == "HEAD":  # HEAD errors carry no body: botocore reads the status alone
        return Response(status_code=exc.status, headers=headers)
    root = ET.Element("Error")
    _el(root, "Code", exc.code)
    _el(root, "Message", exc.message)
    for name, value in exc.fields.items():
        _el(root, name, value)
    if resource:
        _el(root, "Resource", resource)
    _el(root, "RequestId", request_id)
    return _xml(root, exc.status, headers)


def _parse_xml(raw: bytes) -> ET.Element:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        raise S3Error("MalformedXML", 400, "The XML you provided was not well-formed or did not validate "
                      "against our published schema") from None
    for element in root.iter():  # drop namespaces
        if "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    return root


# -- request bodies ------------------------------------------------------------------------------


class AwsChunkedDecoder:
    """Decodes an ``aws-chunked`` body incrementally: ``<hex size>[;chunk-signature=...]\\r\\n<data>\\r\\n``
    ... ``0[;...]\\r\\n`` then optional trailer lines (``x-amz-checksum-crc32:...``) and ``\\r\\n``."""

    MAX_LINE = 8192

    def __init__(self) -> None:
        self.buf = bytearray()
        self.remaining = 0
        self.state = "size"  # size | data | crlf | trailer | done
        self.trailers: dict[str, str] = {}

    def _bad(self, why: str) -> S3Error:
        return S3Error("IncompleteBody", 400, f"The aws-chunked body is malformed: {why}.")

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while True:
            if self.state == "data":
                if not self.buf:
                    break
                take = min(self.remaining, len(self.buf))
                out.append(bytes(self.buf[:take]))
                del self.buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "crlf"
                continue
            if self.state == "crlf":
                if len(self.buf) < 2:
                    break
                if self.buf[:2] != b"\r\n":
                    raise self._bad("a chunk does not end with CRLF")
                del self.buf[:2]
                self.state = "size"
                continue
            if self.state == "done":
                self.buf.clear()
                break
            end = self.buf.find(b"\r\n")
            if end < 0:
                if len(self.buf) > self.MAX_LINE:
                    raise self._bad("a line is too long")
                break
            line = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[:end + 2]
            if self.state == "size":
                try:
                    size = int(line.split(";", 1)[0].strip(), 16)
                except ValueError:
                    raise self._bad(f"bad chunk size {line[:40]!r}") from None
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining = size
                    self.state = "data"
            elif line == "":  # the end of the trailers
                self.state = "done"
            else:
                name, _, value = line.partition(":")
                self.trailers[name.strip().lower()] = value.strip()
        return out

    def finish(self) -> None:
        if self.state == "trailer" and not self.buf:
            self.state = "done"  # some clients omit the final CRLF
        if self.state != "done":
            raise self._bad("the body ended early")


def _checksum_algorithm(request: Request) -> str | None:
    """The flexible checksum the client sends (header or trailer), lower case."""
    declared = (request.headers.get("x-amz-sdk-checksum-algorithm")
                or request.headers.get("x-amz-checksum-algorithm") or "").lower()
    trailer = request.headers.get("x-amz-trailer", "").lower()
    for name in CHECKSUMS:
        if f"x-amz-checksum-{name}" in request.headers or trailer == f"x-amz-checksum-{name}":
            return name
    return declared if declared in CHECKSUMS else None


async def _receive_body(store: S3Store, request: Request) -> tuple[TempFile, dict[str, str]]:
    """Stream the request body into a temp file (aws-chunked decoded) and check its digests;
    returns the finished temp file and the checksum to keep (``{}`` when none was verified)."""
    headers = request.headers
    chunked = ("aws-chunked" in headers.get("content-encoding", "").lower()
               or headers.get("x-amz-content-sha256", "").startswith("STREAMING-"))
    algorithm = _checksum_algorithm(request)
    temp = await run_in_threadpool(store.new_temp, algorithm)
    decoder = AwsChunkedDecoder() if chunked else None
    try:
        pending = bytearray()
        async for chunk in request.stream():
            pieces = decoder.feed(chunk) if decoder else [chunk]
            for piece in pieces:
                pending += piece
            if len(pending) >= FLUSH_BYTES:
                await run_in_threadpool(temp.write, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(temp.write, bytes(pending))
        trailers: dict[str, str] = {}
        if decoder:
            decoder.finish()
            trailers = decoder.trailers
            declared = headers.get("x-amz-decoded-content-length")
            if declared is not None and declared.isdigit() and int(declared) != temp.size:
                raise S3Error("IncompleteBody", 400, "You did not provide the number of bytes specified by "
                              "the x-amz-decoded-content-length HTTP header.")
        await run_in_threadpool(temp.finish)
        md5 = headers.get("content-md5")
        if md5 is not None:
            try:
                ok = base64.b64decode(md5, validate=True) == temp.md5.digest()
            except (ValueError, binascii.Error):
                raise S3Error("InvalidDigest", 400, "The Content-MD5 you specified was invalid.") from None
            if not ok:
                raise S3Error("BadDigest", 400, "The Content-MD5 you specified did not match what we received.")
        kept: dict[str, str] = {}
        if algorithm:
            name = f"x-amz-checksum-{algorithm}"
            sent = headers.get(name) or trailers.get(name)
            computed = temp.checksum_b64()
            if sent and computed is not None:
                if sent != computed:
                    raise S3Error("BadDigest", 400, f"The {algorithm.upper()} you specified did not match the "
                                  "calculated checksum.")
                kept = {"algorithm": algorithm, "value": computed}
        return temp, kept
    except BaseException:
        await run_in_threadpool(temp.abort)
        raise


def _object_headers(request: Request) -> ObjectMeta:
    """Content-Type, the stored standard headers and ``x-amz-meta-*`` of a write."""
    meta = ObjectMeta(key="")
    headers = request.headers
    meta.content_type = headers.get("content-type") or "binary/octet-stream"
    for name in STORED_HEADERS:
        value = headers.get(name)
        if name == "Content-Encoding" and value:
            value = ",".join(v.strip() for v in value.split(",") if v.strip().lower() != "aws-chunked")
        if value:
            meta.headers[name] = value
    for name, value in headers.items():
        if name.lower().startswith("x-amz-meta-"):
            meta.metadata[name.lower()[len("x-amz-meta-"):]] = value
    return meta


def _meta_headers(meta: ObjectMeta) -> dict[str, str]:
    out = {"ETag": meta.etag, "Last-Modified": _http_date(meta.last_modified), "Content-Type": meta.content_type,
           "Accept-Ranges": "bytes", **meta.headers}
    for name, value in meta.metadata.items():
        out[f"x-amz-meta-{name}"] = value
    return out


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a ``Range: bytes=`` header; ``None`` for no (or an ignorable) range."""
    if not value:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if match is None or (not match.group(1) and not match.group(2)):
        return None  # S3 ignores a range it cannot read (multiple ranges included)
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _invalid_range(value, size)
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise _invalid_range(value, size)
    return start, min(end, size - 1)


def _invalid_range(value: str, size: int) -> S3Error:
    return S3Error("InvalidRange", 416, "The requested range is not satisfiable", RangeRequested=value,
                   ActualObjectSize=str(size))


def _file_chunks(fh: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    try:
        fh.seek(start)
        while length > 0:
            block = fh.read(min(length, 1 << 20))
            if not block:
                break
            length -= len(block)
            yield block
    finally:
        fh.close()


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.strip('"') == etag.strip('"') for t in tags)


# -- the API -------------------------------------------------------------------------------------


class S3Api:
    """The S3 operations over one :class:`S3Store`, as an ASGI app."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_read = False

        async def tracking_receive() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read = True
            return message

        request = Request(scope, tracking_receive)
        request_id = uuid.uuid4().hex[:16].upper()
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = unquote(raw_path.decode("latin-1"), errors="surrogateescape")
        bucket, _, key = path.lstrip("/").partition("/")
        try:
            response = await self.handle(request, bucket, key)
        except ClientDisconnect:
            return  # nothing was stored; nobody to answer
        except S3Error as exc:
            response = error_response(exc, request_id, request.method, path)
        except Exception as exc:
            logger.exception("S3 %s %s failed", request.method, path)
            internal = S3Error("InternalError", 500, f"We encountered an internal error: {type(exc).__name__}: {exc}")
            response = error_response(internal, request_id, request.method, path)
        response.headers["x-amz-request-id"] = request_id
        response.headers["x-amz-id-2"] = request_id
        has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
        if has_body and not body_read:
            # answered before the body came (an error, or Expect: 100-continue never granted): the
            # client may not send it, and what it does send must not be read as the next request
            response.headers["Connection"] = "close"
        await response(scope, tracking_receive, send)

    async def handle(self, request: Request, bucket: str, key: str) -> Response:
        method = request.method
        query = parse_qs(request.url.query, keep_blank_values=True)
        q = {name: values[0] for name, values in query.items()}
        if any(name in q for name in _UNSUPPORTED):
            raise S3Error("NotImplemented", 501, "A header or query you provided implies functionality "
                          "that mainsail's S3 does not implement.")
        if not bucket:
            if method in ("GET", "HEAD"):
                return await run_in_threadpool(self.list_buckets, q)
            raise _method_not_allowed(method)
        if not key:
            if method == "PUT":
                return await self.create_bucket(request, bucket)
            if method == "HEAD":
                return await run_in_threadpool(self.head_bucket, bucket)
            if method == "DELETE":
                await run_in_threadpool(self.store.delete_bucket, bucket)
                return Response(status_code=204)
            if method == "GET":
                if "location" in q:
                    return await run_in_threadpool(self.get_bucket_location, bucket)
                if "uploads" in q:
                    return await run_in_threadpool(self.list_uploads, bucket)
                return await run_in_threadpool(self.list_objects, bucket, q)
            if method == "POST" and "delete" in q:
                return await self.delete_objects(request, bucket)
            raise _method_not_allowed(method)
        if method == "PUT":
            if "uploadId" in q or "partNumber" in q:
                return await self.upload_part(request, bucket, key, q)
            if "x-amz-copy-source" in request.headers:
                return await self.copy_object(request, bucket, key)
            return await self.put_object(request, bucket, key)
        if method in ("GET", "HEAD"):
            if "uploadId" in q and method == "GET":
                return await run_in_threadpool(self.list_parts, bucket, key, q)
            return await run_in_threadpool(self.get_object, request, bucket, key, q)
        if method == "DELETE":
            if "uploadId" in q:
                await run_in_threadpool(self.store.abort_upload, bucket, key, q["uploadId"])
            else:
                await run_in_threadpool(self.store.delete, bucket, key)
            return Response(status_code=204)
        if method == "POST":
            if "uploads" in q:
                meta = _object_headers(request)
                meta.key = key
                upload_id = await run_in_threadpool(self.store.create_upload, bucket, meta)
                root = _root("InitiateMultipartUploadResult")
                _el(root, "Bucket", bucket)
                _el(root, "Key", key)
                _el(root, "UploadId", upload_id)
                return _xml(root)
            if "uploadId" in q:
                return await self.complete_upload(request, bucket, key, q["uploadId"])
        raise _method_not_allowed(method)

    # -- buckets --------------------------------------------------------------------------------

    def list_buckets(self, q: dict[str, str]) -> Response:
        root = _root("ListAllMyBucketsResult")
        owner = _el(root, "Owner")
        _el(owner, "DisplayName", "mainsail")
        _el(owner, "ID", OWNER_ID)
        buckets = _el(root, "Buckets")
        prefix = q.get("prefix", "")
        for bucket in self.store.list_buckets():
            if bucket.name.startswith(prefix):
                item = _el(buckets, "Bucket")
                _el(item, "Name", bucket.name)
                _el(item, "CreationDate", _iso(bucket.created))
                _el(item, "BucketRegion", bucket.region)
        if prefix:
            _el(root, "Prefix", prefix)
        return _xml(root)

    async def create_bucket(self, request: Request, bucket: str) -> Response:
        raw = await _read_small(request)
        constraint = ""
        if raw.strip():
            node = _parse_xml(raw).find("LocationConstraint")
            constraint = (node.text or "").strip() if node is not None else ""
        region = _request_region(request)
        if region == DEFAULT_REGION:
            if constraint == DEFAULT_REGION:
                raise S3Error("InvalidLocationConstraint", 400, "The specified location-constraint is not valid",
                              LocationConstraint=constraint)
        elif constraint != region:
            raise S3Error("IllegalLocationConstraintException", 400,
                          f"The {constraint or 'unspecified'} location constraint is incompatible for the region "
                          "specific endpoint this request was sent to.")
        bucket_region = constraint or DEFAULT_REGION
        created = await run_in_threadpool(self.store.create_bucket, bucket, bucket_region)
        if not created:
            existing = await run_in_threadpool(self.store.bucket, bucket)
            if not (existing.region == DEFAULT_REGION and region == DEFAULT_REGION):
                raise S3Error("BucketAlreadyOwnedByYou", 409, "Your previous request to create the named bucket "
                              "succeeded and you already own it.", BucketName=bucket)
        return Response(status_code=200, headers={"Location": f"/{bucket}"})

    def head_bucket(self, bucket: str) -> Response:
        found = self.store.bucket(bucket)
        return Response(status_code=200, headers={"x-amz-bucket-region": found.region})

    def get_bucket_location(self, bucket: str) -> Response:
        found = self.store.bucket(bucket)
        root = _root("LocationConstraint")
        if found.region != DEFAULT_REGION:
            root.text = found.region
        return _xml(root)

    # -- listing --------------------------------------------------------------------------------

    def list_objects(self, bucket: str, q: dict[str, str]) -> Response:
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        url = q.get("encoding-type") == "url"
        if "encoding-type" in q and not url:
            raise S3Error("InvalidArgument", 400, "Invalid Encoding Method specified in Request",
                          ArgumentName="encoding-type", ArgumentValue=q["encoding-type"])
        try:
            max_keys = int(q.get("max-keys", "1000"))
        except ValueError:
            raise S3Error("InvalidArgument", 400, "Provided max-keys not an integer or within integer range",
                          ArgumentName="max-keys", ArgumentValue=q.get("max-keys", "")) from None
        if max_keys < 0:
            raise S3Error("InvalidArgument", 400, "Argument maxKeys must be an integer between 0 and 2147483647",
                          ArgumentName="maxKeys", ArgumentValue=str(max_keys))
        max_keys = min(max_keys, 1000)
        marker = q.get("marker", "")
        token = q.get("continuation-token")
        if v2:
            marker = q.get("start-after", "")
            if token is not None:
                try:
                    marker = base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
                except (ValueError, binascii.Error):
                    raise S3Error("InvalidArgument", 400, "The continuation token provided is incorrect",
                                  ArgumentName="continuation-token") from None
        objects = self.store.list_objects(bucket, prefix)
        contents: list[ObjectMeta] = []
        prefixes: list[str] = []
        truncated = False
        last = ""
        for meta in objects:
            entry, rolled = meta.key, None
            if delimiter:
                idx = meta.key.find(delimiter, len(prefix))
                if idx >= 0:
                    rolled = meta.key[:idx + len(delimiter)]
                    entry = rolled
            if marker and entry.encode("utf-8", "surrogatepass") <= marker.encode("utf-8", "surrogatepass"):
                continue
            if rolled is not None and prefixes and prefixes[-1] == rolled:
                continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = max_keys > 0  # as S3 (and moto) answer max-keys=0
                break
            if rolled is not None:
                prefixes.append(rolled)
            else:
                contents.append(meta)
            last = entry

        def enc(value: str) -> str:
            return quote(value, safe="/") if url else value

        root = _root("ListBucketResult")
        _el(root, "Name", bucket)
        _el(root, "Prefix", enc(prefix))
        if v2:
            if "start-after" in q:
                _el(root, "StartAfter", enc(q["start-after"]))
            if token is not None:
                _el(root, "ContinuationToken", token)
            if truncated:
                _el(root, "NextContinuationToken",
                    base64.urlsafe_b64encode(last.encode("utf-8", "surrogatepass")).decode())
            _el(root, "KeyCount", len(contents) + len(prefixes))
        else:
            _el(root, "Marker", enc(marker))
            if truncated and delimiter:
                _el(root, "NextMarker", enc(last))
        _el(root, "MaxKeys", max_keys)
        if delimiter:
            _el(root, "Delimiter", enc(delimiter))
        if url:
            _el(root, "EncodingType", "url")
        _el(root, "IsTruncated", "true" if truncated else "false")
        for meta in contents:
            item = _el(root, "Contents")
            _el(item, "Key", enc(meta.key))
            _el(item, "LastModified", _iso(meta.last_modified))
            _el(item, "ETag", meta.etag)
            _el(item, "Size", meta.size)
            _el(item, "StorageClass", "STANDARD")
            if not v2 or q.get("fetch-owner") == "true":
                owner = _el(item, "Owner")
                _el(owner, "ID", OWNER_ID)
                _el(owner, "DisplayName", "mainsail")
        for rolled_up in prefixes:
            _el(_el(root, "CommonPrefixes"), "Prefix", enc(rolled_up))
        return _xml(root)

    # -- objects --------------------------------------------------------------------------------

    async def put_object(self, request: Request, bucket: str, key: str) -> Response:
        await run_in_threadpool(self.store.bucket, bucket)  # NoSuchBucket before reading the body
        if request.headers.get("if-none-match", "").strip() == "*":
            await run_in_threadpool(self._refuse_existing, bucket, key)
        meta = _object_headers(request)
        meta.key = key
        temp, checksum = await _receive_body(self.store, request)
        meta.checksum = checksum
        if request.headers.get("if-none-match", "").strip() == "*":
            await run_in_threadpool(self._refuse_existing, bucket, key, temp)
        stored = await run_in_threadpool(self.store.commit, bucket, temp, meta)
        headers = {"ETag": stored.etag}
        if checksum:
            headers[f"x-amz-checksum-{checksum['algorithm']}"] = checksum["value"]
        return Response(status_code=200, headers=headers)

    def _refuse_existing(self, bucket: str, key: str, temp: TempFile | None = None) -> None:
        try:
            self.store.head(bucket, key)
        except S3Error:
            return
        if temp is not None:
            temp.abort()
        raise S3Error("PreconditionFailed", 412, "At least one of the pre-conditions you specified did not hold",
                      Condition="If-None-Match")

    def get_object(self, request: Request, bucket: str, key: str, q: dict[str, str]) -> Response:
        head = request.method == "HEAD"
        meta, fh = self.store.open(bucket, key)
        try:
            match, none_match = request.headers.get("if-match"), request.headers.get("if-none-match")
            if match is not None and not _etag_matches(match, meta.etag):
                raise S3Error("PreconditionFailed", 412, "At least one of the pre-conditions you specified did "
                              "not hold", Condition="If-Match")
            if none_match is not None and _etag_matches(none_match, meta.etag):
                fh.close()
                return Response(status_code=304, headers={"ETag": meta.etag,
                                                          "Last-Modified": _http_date(meta.last_modified)})
            headers = _meta_headers(meta)
            for name, header in (("response-content-type", "Content-Type"),
                                 ("response-content-disposition", "Content-Disposition"),
                                 ("response-content-encoding", "Content-Encoding"),
                                 ("response-content-language", "Content-Language"),
                                 ("response-cache-control", "Cache-Control"), ("response-expires", "Expires")):
                if name in q:
                    headers[header] = q[name]
            rng = _parse_range(request.headers.get("range"), meta.size)
            status, start, length = 200, 0, meta.size
            if rng is not None:
                status, start, length = 206, rng[0], rng[1] - rng[0] + 1
                headers["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{meta.size}"
            elif (request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"
                  and meta.checksum.get("value")):
                headers[f"x-amz-checksum-{meta.checksum['algorithm']}"] = meta.checksum["value"]
            headers["Content-Length"] = str(length)
            if head:
                fh.close()
                return Response(status_code=status, headers=headers)
            # the generator closes the file when it ends; the background task when it never ran
            return StreamingResponse(_file_chunks(fh, start, length), status_code=status, headers=headers,
                                     background=BackgroundTask(fh.close))
        except BaseException:
            fh.close()
            raise

    async def copy_object(self, request: Request, bucket: str, key: str) -> Response:
        source = unquote(request.headers["x-amz-copy-source"].split("?", 1)[0]).lstrip("/")
        src_bucket, _, src_key = source.partition("/")
        if not src_bucket or not src_key:
            raise S3Error("InvalidArgument", 400, "Copy Source must mention the source bucket and key: "
                          "sourcebucket/sourcekey", ArgumentName="x-amz-copy-source")
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", 400, "Unknown metadata directive.",
                          ArgumentName="x-amz-metadata-directive", ArgumentValue=directive)
        replace: ObjectMeta | None = None
        if directive == "REPLACE":
            replace = _object_headers(request)
        elif (src_bucket, src_key) == (bucket, key):
            raise S3Error("InvalidRequest", 400, "This copy request is illegal because it is trying to copy an "
                          "object to itself without changing the object's metadata, storage class, website "
                          "redirect location or encryption attributes.")
        await _read_small(request)
        stored = await run_in_threadpool(self.store.copy, src_bucket, src_key, bucket, replace, key)
        root = _root("CopyObjectResult")
        _el(root, "LastModified", _iso(stored.last_modified))
        _el(root, "ETag", stored.etag)
        return _xml(root)

    async def delete_objects(self, request: Request, bucket: str) -> Response:
        await run_in_threadpool(self.store.bucket, bucket)
        doc = _parse_xml(await _read_small(request))
        quiet = (doc.findtext("Quiet") or "").strip().lower() == "true"
        keys = [obj.findtext("Key") or "" for obj in doc.findall("Object")]
        if len(keys) > 1000:
            raise S3Error("MalformedXML", 400, "The XML you provided was not well-formed or did not validate "
                          "against our published schema")
        root = _root("DeleteResult")
        for key in keys:
            try:
                await run_in_threadpool(self.store.delete, bucket, key)
            except S3Error as exc:
                error = _el(root, "Error")
                _el(error, "Key", key)
                _el(error, "Code", exc.code)
                _el(error, "Message", exc.message)
                continue
            if not quiet:
                _el(_el(root, "Deleted"), "Key", key)
        return _xml(root)

    # -- multipart ------------------------------------------------------------------------------

    async def upload_part(self, request: Request, bucket: str, key: str, q: dict[str, str]) -> Response:
        upload_id = q.get("uploadId", "")
        try:
            number = int(q.get("partNumber", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error("InvalidArgument", 400, f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, "
                          "inclusive", ArgumentName="partNumber", ArgumentValue=q.get("partNumber", ""))
        if "x-amz-copy-source" in request.headers:
            raise S3Error("NotImplemented", 501, "UploadPartCopy is not implemented by mainsail's S3.")
        await run_in_threadpool(self.store.upload_meta, bucket, upload_id, key)  # before the body
        temp, checksum = await _receive_body(self.store, request)
        etag = await run_in_threadpool(self.store.put_part, bucket, key, upload_id, number, temp)
        headers = {"ETag": etag}
        if checksum:
            headers[f"x-amz-checksum-{checksum['algorithm']}"] = checksum["value"]
        return Response(status_code=200, headers=headers)

    def list_parts(self, bucket: str, key: str, q: dict[str, str]) -> Response:
        upload_id = q["uploadId"]
        parts = self.store.parts(bucket, key, upload_id)
        try:
            marker = int(q.get("part-number-marker", "0") or "0")
            max_parts = min(int(q.get("max-parts", "1000") or "1000"), 1000)
        except ValueError:
            raise S3Error("InvalidArgument", 400, "part-number-marker and max-parts must be integers") from None
        after = [p for p in parts if p.number > marker]
        page = after[:max_parts]
        root = _root("ListPartsResult")
        _el(root, "Bucket", bucket)
        _el(root, "Key", key)
        _el(root, "UploadId", upload_id)
        _el(root, "PartNumberMarker", marker)
        if page:
            _el(root, "NextPartNumberMarker", page[-1].number)
        _el(root, "MaxParts", max_parts)
        _el(root, "IsTruncated", "true" if len(after) > len(page) else "false")
        _el(root, "StorageClass", "STANDARD")
        for part in page:
            item = _el(root, "Part")
            _el(item, "PartNumber", part.number)
            _el(item, "LastModified", _iso(part.last_modified))
            _el(item, "ETag", part.etag)
            _el(item, "Size", part.size)
        return _xml(root)

    def list_uploads(self, bucket: str) -> Response:
        root = _root("ListMultipartUploadsResult")
        _el(root, "Bucket", bucket)
        _el(root, "KeyMarker", "")
        _el(root, "UploadIdMarker", "")
        _el(root, "MaxUploads", 1000)
        _el(root, "IsTruncated", "false")
        for upload_id, meta, initiated in self.store.uploads(bucket):
            item = _el(root, "Upload")
            _el(item, "Key", meta.key)
            _el(item, "UploadId", upload_id)
            _el(item, "StorageClass", "STANDARD")
            _el(item, "Initiated", _iso(initiated))
        return _xml(root)

    async def complete_upload(self, request: Request, bucket: str, key: str, upload_id: str) -> Response:
        await run_in_threadpool(self.store.upload_meta, bucket, upload_id, key)
        doc = _parse_xml(await _read_small(request))
        wanted: list[tuple[int, str]] = []
        for part in doc.findall("Part"):
            try:
                wanted.append((int(part.findtext("PartNumber") or ""), part.findtext("ETag") or ""))
            except ValueError:
                raise S3Error("MalformedXML", 400, "The XML you provided was not well-formed or did not "
                              "validate against our published schema") from None
        stored = await run_in_threadpool(self.store.complete_upload, bucket, key, upload_id, wanted)
        root = _root("CompleteMultipartUploadResult")
        _el(root, "Location", f"{str(request.base_url).rstrip('/')}/{bucket}/{quote(key)}")
        _el(root, "Bucket", bucket)
        _el(root, "Key", key)
        _el(root, "ETag", stored.etag)
        return _xml(root)


def _method_not_allowed(method: str) -> S3Error:
    return S3Error("MethodNotAllowed", 405, "The specified method is not allowed against this resource.",
                   Method=method, ResourceType="OBJECT")


async def _read_small(request: Request) -> bytes:
    """A small (XML) request body, aws-chunked decoded; ``MaxMessageLengthExceeded`` past 4 MiB."""
    chunked = "aws-chunked" in request.headers.get("content-encoding", "").lower()
    decoder = AwsChunkedDecoder() if chunked else None
    body = bytearray()
    async for chunk in request.stream():
        for piece in decoder.feed(chunk) if decoder else [chunk]:
            body += piece
        if len(body) > XML_LIMIT:
            raise S3Error("MaxMessageLengthExceeded", 400, "Your request was too big.")
    if decoder:
        decoder.finish()
    return bytes(body)


def _request_region(request: Request) -> str:
    match = _CREDENTIAL_RE.search(request.headers.get("authorization", ""))
    return match.group(1) if match else DEFAULT_REGION


# -- routing inside the control app --------------------------------------------------------------


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def signed_for_s3(scope: Scope) -> bool:
    """Whether a request is signed for the ``s3`` service: SigV4 (header or presigned URL) with an
    ``s3`` credential scope, or SigV2 (header or presigned URL), which only S3 speaks."""
    headers = _headers(scope)
    auth = headers.get("authorization", "")
    match = _CREDENTIAL_RE.search(auth)
    if match:
        return match.group(2) == "s3"
    if auth.startswith("AWS "):
        return True
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    credential = query.get("X-Amz-Credential", [""])[0]
    if credential:
        return bool(credential.endswith("/s3/aws4_request"))
    return "AWSAccessKeyId" in query and "Signature" in query  # a SigV2 presigned URL: S3 only


def claims_before_control(scope: Scope) -> bool:
    """Requests that S3 takes although a control-plane route would match their path: anything signed
    for ``s3``, ``POST /endpoints/.../invocations`` with an S3 query (``uploads``, ``uploadId``,
    ``delete``: a bucket named ``endpoints``), and ``GET /metrics`` with an ``Authorization`` header."""
    if scope["type"] != "http":
        return False
    if signed_for_s3(scope):
        return True
    method, path = scope["method"], scope["path"]
    if method == "POST" and _INVOCATIONS_RE.fullmatch(path):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        return any(name in query for name in _S3_QUERY)
    if method == "GET" and path == "/metrics":
        return "authorization" in _headers(scope)
    return False


class S3Route(BaseRoute):
    """A Starlette route that hands the requests ``claim`` accepts to the S3 app, whatever their path."""

    def __init__(self, app: S3Api, claim: Callable[[Scope], bool]) -> None:
        self.app = app
        self.claim = claim

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and self.claim(scope):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: object) -> URLPath:
        raise NoMatchFound(name, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def s3_routes(store: S3Store) -> tuple[S3Route, S3Route]:
    """(first, last): put ``first`` before the control plane's routes and ``last`` after them; S3
    then answers everything the control plane does not (GET/HEAD ``/``, ``/{bucket}``, ...)."""
    api = S3Api(store)
    return S3Route(api, claims_before_control), S3Route(api, lambda scope: True)
