"""Media types, the ``Codec`` protocol and the ``CodecRegistry`` that picks a codec per request.

Nothing here imports numpy, pandas or pyarrow: the codecs import them lazily, inside the calls that
need them, so that importing :mod:`mainsail.codecs` stays cheap.
"""

from __future__ import annotations

import codecs as _stdlib_codecs
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from mainsail.errors import BadRequest, UnsupportedAccept, UnsupportedContentType

ANY = "*/*"


@dataclass(frozen=True)
class MediaType:
    """A parsed ``Content-Type`` or ``Accept`` entry.

    ``type`` is the lowercased ``"type/subtype"``; ``params`` maps lowercased parameter names to their
    values, unquoted. ``charset`` is the ``charset`` parameter, ``"utf-8"`` when absent.
    """

    type: str
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __hash__(self) -> int:  # params is a read-only mapping, which is not hashable itself
        return hash((self.type, tuple(sorted(self.params.items()))))

    @property
    def charset(self) -> str:
        return self.params.get("charset", "utf-8")

    @property
    def is_wildcard(self) -> bool:
        return self.type == ANY or self.type.endswith("/*")

    def matches(self, concrete: str) -> bool:
        """Whether the concrete ``type/subtype`` falls in this (possibly wildcard) range."""
        if self.type == ANY:
            return True
        if self.type.endswith("/*"):
            return concrete.split("/", 1)[0] == self.type[:-2]
        return concrete == self.type


def _split_quoted(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double-quoted strings (which may hold backslash escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_media_type(value: str | None) -> MediaType | None:
    """``'Text/CSV; Charset="UTF-8"'`` -> ``MediaType("text/csv", {"charset": "UTF-8"})``.

    Returns None for None or a blank string. A bare ``*`` (sent by some clients) reads as ``*/*``.
    Parameters without ``=`` are dropped.
    """
    if value is None or not value.strip():
        return None
    head, *rest = _split_quoted(value, ";")
    kind = head.strip().lower()
    if kind == "*":
        kind = ANY
    params: dict[str, str] = {}
    for part in rest:
        name, eq, raw = part.partition("=")
        name = name.strip().lower()
        if eq and name:
            params[name] = _unquote(raw)
    return MediaType(kind, MappingProxyType(params))


def _quality(media_type: MediaType) -> float:
    raw = media_type.params.get("q")
    if raw is None:
        return 1.0
    try:
        q = float(raw)
    except ValueError:
        return 1.0
    if q != q:  # NaN
        return 1.0
    return min(max(q, 0.0), 1.0)


def parse_accept(value: str | None) -> list[MediaType]:
    """An ``Accept`` header -> its media ranges, highest ``q`` first (stable for equal ``q``).

    Ranges with ``q=0`` are dropped; an unparsable ``q`` counts as 1. ``*/*`` is kept as type ``*/*``.
    """
    if value is None:
        return []
    ranges: list[tuple[float, int, MediaType]] = []
    for position, part in enumerate(_split_quoted(value, ",")):
        media_type = parse_media_type(part)
        if media_type is None:
            continue
        q = _quality(media_type)
        if q > 0:
            ranges.append((-q, position, media_type))
    ranges.sort(key=lambda item: (item[0], item[1]))
    return [media_type for _, _, media_type in ranges]


def decode_text(body: bytes, media_type: MediaType) -> str:
    """The body as text in the media type's charset (UTF-8 by default); a leading BOM is dropped.

    Raises ``BadRequest`` naming the byte offset of the first byte that cannot be decoded.
    """
    charset = media_type.charset
    try:
        _stdlib_codecs.lookup(charset)
        text = body.decode(charset)
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"body is not valid {charset}: cannot decode byte 0x{body[exc.start]:02x} "
            f"at byte offset {exc.start} ({exc.reason})"
        ) from None
    except (LookupError, ValueError):  # ValueError: a name the lookup cannot take (a NUL in it)
        raise BadRequest(f"unknown charset {charset!r}") from None
    return text[1:] if text.startswith("\ufeff") else text


@dataclass(frozen=True)
class Encoded:
    """An encoded response: the bytes and the ``Content-Type`` to send with them."""

    body: bytes
    content_type: str


@runtime_checkable
class Codec(Protocol):
    """Turns request bodies of some media types into Python objects, and objects back into bodies.

    ``media_types`` lists the lowercased types the codec answers to; the first is canonical.
    ``decode`` receives the raw body and the parsed ``Content-Type`` (for its charset) and returns a
    ``pandas.DataFrame`` or ``numpy.ndarray``; it raises ``BadRequest`` for a malformed body, saying
    where. ``encode`` returns the body bytes; it raises ``ModelError`` for an object it cannot encode.
    Both are called on worker threads and must not keep per-request state on the codec.
    """

    media_types: tuple[str, ...]

    def decode(self, body: bytes, media_type: MediaType) -> Any: ...

    def encode(self, obj: Any, media_type: MediaType) -> bytes: ...


def _without_charset(content_type: str | None) -> str | None:
    # A str body is already text: re-encoded as UTF-8, any declared charset no longer applies.
    if content_type is None:
        return None
    kept = [p for p in content_type.split(";") if not p.strip().lower().startswith("charset")]
    return ";".join(kept)


class CodecRegistry:
    """Maps media types to codecs, for decoding request bodies and encoding responses.

    An instance (never a module global), built by :func:`mainsail.codecs.default_registry` or by hand and passed
    down to whoever serves requests. A later registration of a type replaces the earlier one.
    """

    def __init__(self, codecs: Iterable[Codec] = ()) -> None:
        self._decoders: dict[str, Codec] = {}
        self._encoders: dict[str, Codec] = {}
        self._canonical_decoders: dict[str, None] = {}
        self._canonical_encoders: dict[str, None] = {}
        for codec in codecs:
            self.register(codec)

    def register(self, codec: Codec, *, decode: bool = True, encode: bool = True) -> None:
        """Register ``codec`` for every type in its ``media_types`` (as decoder and/or encoder).

        Raises ``ValueError`` when ``media_types`` is empty or holds a wildcard or a non-media type.
        """
        types = tuple(codec.media_types)
        if not types:
            raise ValueError(f"{type(codec).__name__}.media_types is empty; list at least one type")
        keys: list[str] = []
        for raw in types:
            parsed = parse_media_type(raw)
            if parsed is None or "/" not in parsed.type or parsed.is_wildcard:
                raise ValueError(f"{type(codec).__name__}.media_types holds {raw!r}; use concrete 'type/subtype' names")
            keys.append(parsed.type)
        for key in keys:
            if decode:
                self._decoders[key] = codec
            if encode:
                self._encoders[key] = codec
        if decode:
            self._canonical_decoders[keys[0]] = None
        if encode:
            self._canonical_encoders[keys[0]] = None

    def decoder_types(self) -> list[str]:
        """Every media type a request body may have, in registration order."""
        return list(self._decoders)

    def encoder_types(self) -> list[str]:
        """Every media type a response may be encoded as, in registration order."""
        return list(self._encoders)

    def decode(self, body: bytes | str, content_type: str | None) -> Any:
        """Decode ``body`` with the codec registered for ``content_type`` (case and parameters aside).

        ``body`` may also be the ``str`` a script's ``input_fn`` receives for JSON and CSV. Raises
        ``UnsupportedContentType`` when the type is missing or unknown, and lets the codec's
        ``BadRequest`` through for a malformed body.
        """
        if isinstance(body, str):
            body = body.encode("utf-8")
            content_type = _without_charset(content_type)
        media_type = parse_media_type(content_type)
        codec = self._decoders.get(media_type.type) if media_type is not None else None
        if media_type is None or codec is None:
            raise UnsupportedContentType(content_type, supported=list(self._canonical_decoders))
        return codec.decode(body, media_type)

    def encode(self, obj: Any, accept: str | None, default: str = "application/json") -> Encoded:
        """Encode ``obj`` as the first type ``accept`` allows (by ``q``) that has an encoder.

        A missing or blank ``accept``, or ``*/*``, means ``default`` (or, when ``default`` has no
        encoder, the first registered type). ``type/*`` ranges prefer ``default`` when it falls in
        them. The returned ``content_type`` is the chosen type without parameters. Raises
        ``UnsupportedAccept`` when nothing acceptable can be encoded.
        """
        parsed_default = parse_media_type(default)
        default_type = parsed_default.type if parsed_default is not None else ""
        if accept is None or not accept.strip():
            ranges = [MediaType(ANY)]
        else:
            ranges = parse_accept(accept)
        for media_range in ranges:
            chosen = self._pick(media_range, default_type)
            if chosen is not None:
                params = {k: v for k, v in media_range.params.items() if k != "q"}
                target = MediaType(chosen, MappingProxyType(params))
                return Encoded(self._encoders[chosen].encode(obj, target), chosen)
        raise UnsupportedAccept(accept, supported=list(self._canonical_encoders))

    def _pick(self, media_range: MediaType, default_type: str) -> str | None:
        if not media_range.is_wildcard:
            return media_range.type if media_range.type in self._encoders else None
        if default_type in self._encoders and media_range.matches(default_type):
            return default_type
        for candidate in self._encoders:
            if media_range.matches(candidate):
                return candidate
        return None

