"""CodecRegistry: type lookup, Accept negotiation, errors, registration; lazy heavy imports."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from mainsail.codecs import (
    Codec,
    CodecRegistry,
    CsvCodec,
    Encoded,
    JsonCodec,
    JsonLinesCodec,
    MediaType,
    NpyCodec,
    ParquetCodec,
    default_registry,
)
from mainsail.errors import UnsupportedAccept, UnsupportedContentType

CANONICAL = "text/csv, application/json, application/jsonlines, application/x-parquet, application/x-npy"


class EchoCodec:
    """A toy codec: bodies are returned as-is, objects are encoded with repr()."""

    def __init__(self, *types: str) -> None:
        self.media_types: tuple[str, ...] = types
        self.seen: list[MediaType] = []

    def decode(self, body: bytes, media_type: MediaType) -> Any:
        self.seen.append(media_type)
        return body

    def encode(self, obj: Any, media_type: MediaType) -> bytes:
        self.seen.append(media_type)
        return repr(obj).encode()


def test_importing_codecs_does_not_import_pandas_or_pyarrow() -> None:
    code = (
        "import sys\n"
        "import mainsail.codecs as codecs\n"
        "registry = codecs.default_registry()\n"
        "registry.encode({'a': 1}, 'application/json')\n"
        "heavy = [m for m in ('pandas', 'pyarrow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_default_registry_types() -> None:
    registry = default_registry()
    assert registry.decoder_types() == registry.encoder_types()
    assert registry.decoder_types() == [
        "text/csv",
        "application/json",
        "application/jsonlines",
        "application/jsonl",
        "application/x-jsonlines",
        "application/json-lines",
        "application/x-ndjson",
        "application/ndjson",
        "application/x-parquet",
        "application/parquet",
        "application/vnd.apache.parquet",
        "application/x-npy",
    ]


def test_default_registries_are_independent() -> None:
    first, second = default_registry(), default_registry()
    first.register(EchoCodec("text/plain"))
    assert "text/plain" in first.decoder_types()
    assert "text/plain" not in second.decoder_types()


def test_builtin_codecs_satisfy_the_protocol() -> None:
    for codec in (CsvCodec(), JsonCodec(), JsonLinesCodec(), ParquetCodec(), NpyCodec()):
        assert isinstance(codec, Codec)


def test_decode_is_case_insensitive_and_ignores_parameters() -> None:
    frame = default_registry().decode(b'{"a": 1}', "Application/JSON; charset=UTF-8; foo=bar")
    assert frame.to_dict("records") == [{"a": 1}]


def test_decode_passes_the_parsed_media_type() -> None:
    echo = EchoCodec("text/plain")
    registry = CodecRegistry([echo])
    assert registry.decode(b"hi", 'TEXT/Plain; Charset="latin-1"') == b"hi"
    assert echo.seen[0].type == "text/plain" and echo.seen[0].charset == "latin-1"


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/*", "garbage"])
def test_decode_unknown_type(content_type: str | None) -> None:
    with pytest.raises(UnsupportedContentType) as info:
        default_registry().decode(b"x", content_type)
    assert info.value.status_code == 415
    assert info.value.content_type == content_type
    assert info.value.message == f"content type {content_type!r} is not supported; supported: {CANONICAL}"


@pytest.mark.parametrize("accept", [None, "", "  ", "*/*", "*", "*/*; q=0.8"])
def test_encode_defaults(accept: str | None) -> None:
    encoded = default_registry().encode({"a": 1}, accept)
    assert encoded == Encoded(b'{"a":1}', "application/json")


def test_encode_custom_default() -> None:
    encoded = default_registry().encode([[1, 2]], "*/*", default="text/csv")
    assert encoded == Encoded(b"1,2\n", "text/csv")


def test_encode_default_without_encoder_falls_back_to_first_type() -> None:
    registry = CodecRegistry([CsvCodec()])
    assert registry.encode([1], None).content_type == "text/csv"


def test_encode_picks_highest_q_with_an_encoder() -> None:
    registry = default_registry()
    encoded = registry.encode([[1, 2]], "image/png, application/json;q=0.5, text/csv;q=0.9")
    assert encoded == Encoded(b"1,2\n", "text/csv")


def test_encode_skips_q_zero() -> None:
    encoded = default_registry().encode([[1, 2]], "text/csv;q=0, application/json")
    assert encoded.content_type == "application/json"


def test_encode_returns_the_requested_alias_without_parameters() -> None:
    encoded = default_registry().encode([{"a": 1}], "Application/X-NDJSON; charset=utf-8")
    assert encoded == Encoded(b'{"a":1}\n', "application/x-ndjson")


def test_encode_wildcard_subtype() -> None:
    registry = default_registry()
    assert registry.encode([1], "application/*").content_type == "application/json"
    assert registry.encode([1], "text/*").content_type == "text/csv"
    # the default wins inside its range; otherwise the first registered type of that range
    assert registry.encode([1], "text/*", default="text/csv").content_type == "text/csv"
    assert registry.encode([1], "application/*", default="text/csv").content_type == "application/json"


def test_encode_passes_parameters_without_q() -> None:
    echo = EchoCodec("text/plain")
    CodecRegistry([echo]).encode(1, "text/plain; q=0.5; charset=latin-1")
    assert dict(echo.seen[0].params) == {"charset": "latin-1"}


@pytest.mark.parametrize("accept", ["image/png", "text/plain, image/*", "text/csv;q=0", "audio/*;q=1"])
def test_encode_unsupported_accept(accept: str) -> None:
    with pytest.raises(UnsupportedAccept) as info:
        default_registry().encode([1], accept)
    assert info.value.status_code == 415
    assert info.value.accept == accept
    assert info.value.message == f"accept type {accept!r} is not supported; supported: {CANONICAL}"


def test_empty_registry_refuses_everything() -> None:
    with pytest.raises(UnsupportedAccept):
        CodecRegistry().encode(1, None)
    with pytest.raises(UnsupportedContentType):
        CodecRegistry().decode(b"", "application/json")


def test_later_registration_replaces_earlier() -> None:
    registry = default_registry()
    echo = EchoCodec("Application/JSON")
    registry.register(echo)
    assert registry.decode(b"[1]", "application/json") == b"[1]"
    assert registry.encode([1], None) == Encoded(b"[1]", "application/json")


def test_decode_only_and_encode_only_registration() -> None:
    registry = CodecRegistry()
    registry.register(EchoCodec("text/plain"), encode=False)
    registry.register(EchoCodec("text/html"), decode=False)
    assert registry.decoder_types() == ["text/plain"]
    assert registry.encoder_types() == ["text/html"]
    with pytest.raises(UnsupportedAccept, match="supported: text/html"):
        registry.encode(1, "text/plain")
    with pytest.raises(UnsupportedContentType, match="supported: text/plain"):
        registry.decode(b"", "text/html")


@pytest.mark.parametrize(
    ("types", "fix"),
    [
        ((), "media_types is empty"),
        (("*/*",), "holds '*/*'"),
        (("text/*",), "holds 'text/*'"),
        (("json",), "holds 'json'"),
        (("",), "holds ''"),
    ],
)
def test_register_validates_media_types(types: tuple[str, ...], fix: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fix)):
        CodecRegistry().register(EchoCodec(*types))


def test_decode_accepts_the_str_an_input_fn_receives() -> None:
    from mainsail.codecs import default_registry

    frame = default_registry().decode('{"a": 1, "b": "x"}', "application/json; charset=latin-1")
    assert frame.to_dict(orient="records") == [{"a": 1, "b": "x"}]
    frame = default_registry().decode("1,é\n", "text/csv")
    assert frame.iloc[0].tolist() == [1, "é"]
