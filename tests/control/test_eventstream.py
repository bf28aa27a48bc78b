"""The event-stream encoder (``mainsail.aws.eventstream``) against botocore's own decoder."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.aws import eventstream

header_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda s: 0 < len(s.encode()) < 256)
header_values = st.one_of(
    st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(max_size=50), st.binary(max_size=50),
    st.uuids(), st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)),
)


def decode(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, message.payload) for message in buffer]


def expected(value: object) -> object:
    """What botocore's decoder gives for a header value."""
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, datetime):  # milliseconds since the epoch, floored (exactly: not through a float)
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    return value


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=6, unique_by=lambda h: h[0]), st.binary(max_size=2048))
def test_messages_decode_as_written(headers: list[tuple[str, object]], payload: bytes) -> None:
    ((decoded_headers, decoded_payload),) = decode(eventstream.encode_message(headers, payload))  # type: ignore[arg-type]
    assert decoded_payload == payload
    assert decoded_headers == {name: expected(value) for name, value in headers}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=4096), min_size=1, max_size=20))
def test_a_stream_of_parts_splits_back_at_any_boundary(parts: list[bytes]) -> None:
    data = b"".join(eventstream.event("PayloadPart", part) for part in parts)
    buffer = EventStreamBuffer()
    got: list[bytes] = []
    for i in range(0, len(data), 7):  # fed in small pieces, as a socket gives them
        buffer.add_data(data[i:i + 7])
        got.extend(message.payload for message in buffer)
    assert got == parts


def test_empty_and_six_megabyte_parts() -> None:
    big = bytes(range(256)) * (6 * 1024 * 1024 // 256)
    (empty, whole) = decode(eventstream.event("PayloadPart", b"") + eventstream.event("PayloadPart", big))
    assert empty[1] == b"" and whole[1] == big
    assert whole[0] == {":event-type": "PayloadPart", ":content-type": "application/octet-stream",
                        ":message-type": "event"}
    ((headers, payload),) = decode(eventstream.exception("ModelStreamError", Message="m", ErrorCode="StreamBroken"))
    assert headers[":message-type"] == "exception" and headers[":exception-type"] == "ModelStreamError"
    assert json.loads(payload) == {"Message": "m", "ErrorCode": "StreamBroken"}


def test_what_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        eventstream.encode_message([], b"x" * (eventstream.MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        eventstream.encode_message([("", "v")])
    with pytest.raises(ValueError, match="64 bits"):
        eventstream.encode_message([("n", 2**64)])
    with pytest.raises(TypeError, match="float"):
        eventstream.encode_message([("n", 1.5)])  # type: ignore[list-item]
