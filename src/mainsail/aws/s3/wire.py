"""S3's wire format: XML documents and error answers, request bodies (``aws-chunked`` decoding, digests
checked as they stream to a temp file), object headers, ``Range`` and conditional headers."""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from mainsail.aws.identity import DEFAULT_REGION
from mainsail.aws.s3.files import CHECKSUMS, ObjectMeta, S3Error, TempFile
from mainsail.aws.s3.store import S3Store
from mainsail.aws.xmltext import xml_safe

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
OWNER_ID = "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a"
XML_LIMIT = 4 * 1024 * 1024
FLUSH_BYTES = 1 << 20
STORED_HEADERS = ("Content-Encoding", "Content-Disposition", "Content-Language", "Cache-Control", "Expires")
_HEX_SIZE = re.compile(r"[ \t]*[0-9a-fA-F]+[ \t]*")
CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/")


# -- XML and responses ---------------------------------------------------------------------------


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def el(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def xml_response(root: ET.Element, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


def xml_root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=NS)


def error_response(exc: S3Error, request_id: str, method: str, resource: str = "") -> Response:
    headers = {"x-amz-request-id": request_id, "x-amz-id-2": request_id}
    if method == "HEAD":  # HEAD errors carry no body: botocore reads the status alone
        return Response(status_code=exc.status, headers=headers)
    root = ET.Element("Error")  # it repeats the client's input (path, method, headers): kept parseable
    el(root, "Code", exc.code)
    el(root, "Message", xml_safe(exc.message))
    for name, value in exc.fields.items():
        el(root, name, xml_safe(str(value)))
    if resource:
        el(root, "Resource", xml_safe(resource))
    el(root, "RequestId", request_id)
    return xml_response(root, exc.status, headers)


def parse_xml(raw: bytes) -> ET.Element:
    try:
        root = ET.fromstring(raw)
    except (ET.ParseError, LookupError, ValueError):  # also an unknown or multi-byte declared encoding
        raise _malformed_xml() from None
    for element in root.iter():  # drop namespaces
        if "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    return root


def _malformed_xml() -> S3Error:
    return S3Error("MalformedXML", 400, "The XML you provided was not well-formed or did not validate against our "
                   "published schema")


def location_constraint(raw: bytes) -> str:
    """CreateBucket's ``<CreateBucketConfiguration><LocationConstraint>`` (``""`` for none or no body)."""
    if not raw.strip():
        return ""
    node = parse_xml(raw).find("LocationConstraint")
    return (node.text or "").strip() if node is not None else ""


def delete_request(raw: bytes) -> tuple[bool, list[str]]:
    """DeleteObjects' ``<Delete>``: (quiet, the keys), at most 1000 of them."""
    doc = parse_xml(raw)
    keys = [obj.findtext("Key") or "" for obj in doc.findall("Object")]
    if len(keys) > 1000:
        raise _malformed_xml()
    return (doc.findtext("Quiet") or "").strip().lower() == "true", keys


def completed_parts(raw: bytes) -> list[tuple[int, str]]:
    """CompleteMultipartUpload's ``<Part>`` s: (PartNumber, ETag) as listed."""
    wanted: list[tuple[int, str]] = []
    for part in parse_xml(raw).findall("Part"):
        try:
            wanted.append((int(part.findtext("PartNumber") or ""), part.findtext("ETag") or ""))
        except ValueError:
            raise _malformed_xml() from None
    return wanted


# -- request bodies ------------------------------------------------------------------------------


class ChunkSigner(Protocol):
    """Checks each chunk's signature (``chunk``: its ``chunk-signature`` and its data's SHA-256) and a
    signed trailer (``trailer``: ``x-amz-trailer-signature`` and the trailer lines it covers)."""

    def chunk(self, signature: str | None, data_sha256: str) -> None: ...

    def trailer(self, signature: str | None, trailer_text: str) -> None: ...


class AwsChunkedDecoder:
    r"""Decodes an ``aws-chunked`` body incrementally: ``<hex size>[;chunk-signature=...]\r\n<data>\r\n``
    ... ``0[;...]\r\n`` then optional trailer lines (``x-amz-checksum-crc32:...``) and ``\r\n``.
    With a ``signer``, every chunk's signature (and a signed trailer's) is checked as it ends."""

    MAX_LINE = 8192

    def __init__(self, signer: ChunkSigner | None = None, *, signed_trailer: bool = False) -> None:
        self.buf = bytearray()
        self.remaining = 0
        self.state = "size"  # size | data | crlf | trailer | done
        self.trailers: dict[str, str] = {}
        self.signer = signer
        self.signed_trailer = signed_trailer
        self.chunk_signature: str | None = None
        self.chunk_hash = hashlib.sha256()
        self.trailer_text = ""
        self.trailer_signature: str | None = None

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
                piece = bytes(self.buf[:take])
                out.append(piece)
                del self.buf[:take]
                self.remaining -= take
                if self.signer:
                    self.chunk_hash.update(piece)
                if self.remaining == 0:
                    self.state = "crlf"
                    if self.signer:
                        self.signer.chunk(self.chunk_signature, self.chunk_hash.hexdigest())
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
                size_text, _, extension = line.partition(";")
                if not _HEX_SIZE.fullmatch(size_text):  # int(x, 16) also reads "-5", "0x5", "5_0"
                    raise self._bad(f"bad chunk size {line[:40]!r}")
                size = int(size_text, 16)
                name, _, value = extension.partition("=")
                self.chunk_signature = value.strip() if name.strip() == "chunk-signature" else None
                self.chunk_hash = hashlib.sha256()
                if size == 0:
                    self.state = "trailer"
                    if self.signer:
                        self.signer.chunk(self.chunk_signature, self.chunk_hash.hexdigest())
                else:
                    self.remaining = size
                    self.state = "data"
            elif line == "":  # the end of the trailers
                self.state = "done"
                if self.signer and self.signed_trailer:
                    self.signer.trailer(self.trailer_signature, self.trailer_text)
            else:
                name, _, value = line.partition(":")
                if name.strip().lower() == "x-amz-trailer-signature":
                    self.trailer_signature = value.strip()
                    continue
                self.trailer_text += line + "\n"
                self.trailers[name.strip().lower()] = value.strip()
        return out

    def finish(self) -> None:
        if self.state == "trailer" and not self.buf:
            self.state = "done"  # some clients omit the final CRLF
            if self.signer and self.signed_trailer:
                self.signer.trailer(self.trailer_signature, self.trailer_text)
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


async def receive_body(store: S3Store, request: Request) -> tuple[TempFile, dict[str, str]]:
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


def object_headers(request: Request) -> ObjectMeta:
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


def meta_headers(meta: ObjectMeta) -> dict[str, str]:
    out = {"ETag": meta.etag, "Last-Modified": http_date(meta.last_modified), "Content-Type": meta.content_type,
           "Accept-Ranges": "bytes", **meta.headers}
    for name, value in meta.metadata.items():
        out[f"x-amz-meta-{name}"] = value
    return out


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
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


def file_chunks(fh: IO[bytes], start: int, length: int) -> Iterator[bytes]:
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


def etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.strip('"') == etag.strip('"') for t in tags)


async def read_small(request: Request) -> bytes:
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


def request_region(request: Request) -> str:
    match = CREDENTIAL_RE.search(request.headers.get("authorization", ""))
    return match.group(1) if match else DEFAULT_REGION
