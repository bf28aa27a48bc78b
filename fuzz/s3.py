"""Targets for mainsail's S3 (REST-XML): the XML request documents, ``aws-chunked`` bodies, and whole
requests through the ASGI app over a store in a scratch directory."""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

from fuzz import Target, Violation, check, scratch
from fuzz.inputs import Reader, http_request
from mainsail.aws.s3.api import S3Api
from mainsail.aws.s3.files import S3Error
from mainsail.aws.s3.store import S3Store
from mainsail.aws.s3.wire import AwsChunkedDecoder, completed_parts, delete_request, location_constraint


def _client_error(exc: S3Error) -> None:
    check(400 <= exc.status < 500, f"S3Error {exc.code} answers {exc.status}")


# -- the XML request documents -----------------------------------------------------------------------


def s3_xml(data: bytes) -> None:
    reader = Reader(data)
    parse = reader.pick((location_constraint, delete_request, completed_parts))
    try:
        parse(reader.rest())
    except S3Error as exc:
        _client_error(exc)


def _s3_xml_seeds() -> list[bytes]:
    ns = b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
    return [b"\0<CreateBucketConfiguration" + ns + b"><LocationConstraint>eu-west-1</LocationConstraint>"
            b"</CreateBucketConfiguration>",
            b"\1<Delete" + ns + b"><Object><Key>a/b</Key></Object><Object><Key>&lt;c&amp;</Key></Object>"
            b"<Quiet>true</Quiet></Delete>",
            b'\2<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUpload' + ns + b"><Part><ETag>\"e1\"</ETag>"
            b"<PartNumber>1</PartNumber></Part><Part><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>",
            b'\1<!DOCTYPE d [<!ENTITY e "x">]><Delete><Object><Key>&e;</Key></Object></Delete>']


# -- aws-chunked bodies ------------------------------------------------------------------------------

_HEX = re.compile(rb"[ \t]*[0-9a-fA-F]+[ \t]*")


class _Recorder:
    """A chunk signer that accepts every signature and records what it was asked to check."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str]] = []

    def chunk(self, signature: str | None, data_sha256: str) -> None:
        self.calls.append(("chunk", signature, data_sha256))

    def trailer(self, signature: str | None, trailer_text: str) -> None:
        self.calls.append(("trailer", signature, trailer_text))


def _decode(body: bytes, cuts: list[int]) -> tuple[str, bytes, dict[str, str], list[Any]]:
    """Feed ``body`` cut at ``cuts``: ("ok" or the error code, the data, the trailers, the signer's calls)."""
    recorder = _Recorder()
    decoder = AwsChunkedDecoder(recorder, signed_trailer=True)
    out = bytearray()
    try:
        for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
            for piece in decoder.feed(body[start:end]):
                out += piece
        decoder.finish()
    except S3Error as exc:
        _client_error(exc)
        return exc.code, bytes(out), {}, recorder.calls
    return "ok", bytes(out), decoder.trailers, recorder.calls


def _reference(body: bytes) -> bytes | None:
    r"""The data of a well-formed aws-chunked body, or None: ``hex-size[;ext]\r\n`` ``data\r\n`` ... a zero
    size, then trailer lines, each ending in CRLF, up to an empty line (or the body's end); no line
    longer than the decoder's ``MAX_LINE``."""
    pos, out = 0, bytearray()
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0 or end - pos > AwsChunkedDecoder.MAX_LINE:
            return None
        size_text = body[pos:end].partition(b";")[0]
        if not _HEX.fullmatch(size_text):
            return None
        size, pos = int(size_text, 16), end + 2
        if size == 0:
            break
        if len(body) < pos + size + 2 or body[pos + size:pos + size + 2] != b"\r\n":
            return None
        out += body[pos:pos + size]
        pos += size + 2
    while pos < len(body):
        end = body.find(b"\r\n", pos)
        if end < 0 or end - pos > AwsChunkedDecoder.MAX_LINE:
            return None
        if end == pos:
            break
        pos = end + 2
    return bytes(out)


def aws_chunked(data: bytes) -> None:
    reader = Reader(data)
    cuts = [reader.u8() for _ in range(reader.u8() % 4)]
    body = reader.rest()
    whole = _decode(body, [])
    cut = _decode(body, sorted({c * len(body) // 256 for c in cuts}))
    check(whole[0] == cut[0] and (whole[0] != "ok" or whole == cut),
          f"the body decodes one way whole ({whole[0]}), another cut in pieces ({cut[0]})")
    expected = _reference(body)
    check((whole[0] == "ok") == (expected is not None),
          f"the decoder {'accepts' if whole[0] == 'ok' else 'refuses'} a body that is "
          f"{'not ' if expected is None else ''}well-formed aws-chunked")
    check(expected is None or whole[1] == expected, "the decoded data is the chunks' data")


def _aws_chunked_seeds() -> list[bytes]:
    sig = b";chunk-signature=" + b"0" * 64
    return [b"\2\x40\x80" + b"5" + sig + b"\r\nhello\r\n0" + sig + b"\r\n\r\n",
            b"\1\x10" + b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\nx-amz-trailer-signature:ab\r\n\r\n",
            b"\0" + b"a\r\n0123456789\r\n0\r\n", b"\0" + b"0\r\n"]


# -- whole S3 requests -------------------------------------------------------------------------------

RESET_EVERY = 500


class _S3:
    """The app over a store in a scratch directory, remade every ``RESET_EVERY`` requests."""

    def __init__(self) -> None:
        self.root = scratch("s3")
        self.loop = asyncio.new_event_loop()
        self.count = 0
        self.reset()

    def reset(self) -> None:
        shutil.rmtree(self.root / "store", ignore_errors=True)
        store = S3Store(self.root / "store")
        store.create_bucket("bucket")
        self.app = S3Api(store)
        self.request(*http_request(b"PUT /bucket/key\ncontent-type: text/plain\nx-amz-meta-a: 1\n\nhello world"))

    def request(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": unquote(path), "raw_path": path.encode("latin-1"),
                 "query_string": query.encode("latin-1"), "root_path": "", "server": ("h", 80),
                 "client": ("127.0.0.1", 1),
                 "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]}
        pieces = [body[:len(body) // 2], body[len(body) // 2:]]
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pieces:
                piece = pieces.pop(0)
                return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
            await asyncio.Event().wait()  # the client stays until the answer is sent
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        self.loop.run_until_complete(self.app(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}, answer


@functools.cache
def _s3() -> _S3:
    return _S3()


_NOT_TOKEN = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_NOT_VCHAR = re.compile(r"[^\x21-\x7e]")
_NOT_FIELD = re.compile(r"[\x00\t\n\v\f\r]")


def _as_served(method: str, path: str, query: str, headers: list[tuple[str, str]]) -> tuple[str, str, str, list[
        tuple[str, str]]]:
    """What an HTTP server (h11's grammar) lets through: a token method and header names, a request
    target of visible ASCII, header values without NUL or line breaks."""
    served = [(_NOT_TOKEN.sub("", name), _NOT_FIELD.sub("", value).strip()) for name, value in headers]
    return (_NOT_TOKEN.sub("", method) or "GET", "/" + _NOT_VCHAR.sub("", path).lstrip("/"), _NOT_VCHAR.sub("", query),
            [(name, value) for name, value in served if name])


def s3_rest(data: bytes) -> None:
    s3 = _s3()
    s3.count += 1
    if s3.count % RESET_EVERY == 0:
        s3.reset()
    method, path, query, headers = _as_served(*http_request(data)[:4])
    body = http_request(data)[4]
    status, response_headers, answer = s3.request(method, path, query, headers, body)
    check(status < 500 or status == 501, f"S3 answers {status}: {answer[:400]!r}")
    if status >= 400 and answer:  # an error botocore must read the code of
        try:
            ET.fromstring(answer)
        except ET.ParseError as exc:
            raise Violation(f"S3 answers XML that is not well-formed ({exc}): {answer[:300]!r}") from None
    outside = sorted(p.name for p in s3.root.iterdir() if p.name != "store")
    check(not outside, f"a request wrote outside the store: {outside}")


def _s3_rest_seeds() -> list[bytes]:
    chunked = b"5;chunk-signature=ab\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n"
    return [b"GET /bucket/key\nrange: bytes=2-5\nif-none-match: \"x\"", b"HEAD /bucket/key\nif-match: *",
            b"GET /bucket?list-type=2&prefix=k&delimiter=/&max-keys=1&encoding-type=url",
            b"PUT /bucket/new%20key\ncontent-md5: XrY7u+Ae7tCTyyK7j1rNww==\n\nhello world",
            b"PUT /bucket/c\ncontent-encoding: aws-chunked\nx-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER"
            b"\nx-amz-trailer: x-amz-checksum-crc32\nx-amz-decoded-content-length: 5\n\n" + chunked,
            b"POST /bucket?delete\n\n<Delete><Object><Key>key</Key></Object></Delete>",
            b"POST /bucket/m?uploads", b"POST /bucket/m?uploadId=x\n\n<CompleteMultipartUpload><Part><PartNumber>1"
            b"</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
            b"PUT /bucket/copy\nx-amz-copy-source: /bucket/key\nx-amz-metadata-directive: REPLACE",
            b"PUT /other-bucket\n\n<CreateBucketConfiguration><LocationConstraint>us-west-2</LocationConstraint>"
            b"</CreateBucketConfiguration>", b"GET /?prefix=b", b"DELETE /bucket/key"]


TARGETS = [
    Target("s3_xml", s3_xml, "CreateBucket, DeleteObjects and CompleteMultipartUpload bodies parse or raise a 4xx "
           "S3Error (MalformedXML)", _s3_xml_seeds),
    Target("aws_chunked", aws_chunked, "AwsChunkedDecoder accepts exactly the well-formed aws-chunked bodies, gives "
           "their data, raises only a 4xx S3Error, and decodes a body the same however it is cut into reads",
           _aws_chunked_seeds),
    Target("s3_rest", s3_rest, "any request an HTTP server lets through answers below 500 (or 501), errors as "
           "well-formed XML, and nothing is written outside the store", _s3_rest_seeds),
]
