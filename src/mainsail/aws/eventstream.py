"""The AWS event-stream encoding (``application/vnd.amazon.eventstream``), writing side.

What streaming operations answer (``InvokeEndpointWithResponseStream``): a sequence of messages, each

    total length (u32) | headers length (u32) | prelude CRC32 (u32) | headers | payload | message CRC32 (u32)

big-endian, the CRCs CRC-32 (zlib's) of the bytes before them. A header is its name's length (u8), the
name, a type byte and the value (strings and byte arrays with a u16 length). botocore ships only a
decoder (``botocore.eventstream``), which the tests check this encoder against. No maintained Python
encoder is on the index (``awscrt`` encodes only inside its RPC client), so this is written once, small.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson

# header value types (the wire codes)
BOOL_TRUE, BOOL_FALSE, BYTE, SHORT, INTEGER, LONG, BYTE_ARRAY, STRING, TIMESTAMP, UUID = range(10)

MAX_HEADERS = 128 * 1024
MAX_PAYLOAD = 16 * 1024 * 1024
"""The decoders' limits (botocore refuses a message over them)."""

HeaderValue = str | bytes | bool | int | datetime | uuid.UUID
_PRELUDE = struct.Struct(">II")
_INT_TYPES = ((BYTE, ">b"), (SHORT, ">h"), (INTEGER, ">i"), (LONG, ">q"))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode("utf-8")
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"a header name is 1 to 255 bytes: {name!r}")
    out = bytes((len(raw_name),)) + raw_name
    if isinstance(value, bool):
        return out + bytes((BOOL_TRUE if value else BOOL_FALSE,))
    if isinstance(value, (str, bytes)):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if len(raw) > 65535:
            raise ValueError(f"header {name!r}: a value is at most 65535 bytes, not {len(raw)}")
        return out + bytes((STRING if isinstance(value, str) else BYTE_ARRAY,)) + struct.pack(">H", len(raw)) + raw
    if isinstance(value, datetime):
        # milliseconds by integer arithmetic (a float's product is off by one for some); a naive
        # datetime is local time, as datetime.timestamp() reads it
        since = (value if value.tzinfo is not None else value.astimezone()) - _EPOCH
        return out + bytes((TIMESTAMP,)) + struct.pack(">q", since // timedelta(milliseconds=1))
    if isinstance(value, uuid.UUID):
        return out + bytes((UUID,)) + value.bytes
    if isinstance(value, int):  # the smallest type that holds it, as the SDKs write integers
        for code, fmt in _INT_TYPES:
            try:
                return out + bytes((code,)) + struct.pack(fmt, value)
            except struct.error:
                continue
        raise ValueError(f"header {name!r}: {value} does not fit in 64 bits")
    raise TypeError(f"header {name!r}: a {type(value).__name__} cannot be an event-stream header value")


def encode_message(headers: Sequence[tuple[str, HeaderValue]], payload: bytes = b"") -> bytes:
    """One message: ``headers`` in order, then ``payload``. A name given twice is a ``ValueError``
    (botocore's decoder refuses such a message)."""
    names = [name for name, _ in headers]
    if len(set(names)) != len(names):
        raise ValueError(f"header names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    raw_headers = b"".join(_header(name, value) for name, value in headers)
    if len(raw_headers) > MAX_HEADERS:
        raise ValueError(f"headers of {len(raw_headers)} bytes: at most {MAX_HEADERS}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a payload of {len(payload)} bytes: at most {MAX_PAYLOAD} per message")
    total = _PRELUDE.size + 4 + len(raw_headers) + len(payload) + 4
    prelude = _PRELUDE.pack(total, len(raw_headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, payload, struct.pack(">I", crc)))


def event(event_type: str, payload: bytes, content_type: str = "application/octet-stream") -> bytes:
    """An event message (``:message-type`` ``event``) of ``event_type`` carrying ``payload``."""
    return encode_message([(":event-type", event_type), (":content-type", content_type),
                           (":message-type", "event")], payload)


def exception(exception_type: str, **members: str) -> bytes:
    """A modelled exception message (``:message-type`` ``exception``): its members as a JSON payload,
    which the SDKs raise as the error ``exception_type``."""
    return encode_message([(":exception-type", exception_type), (":content-type", "application/json"),
                           (":message-type", "exception")], orjson.dumps(members))
