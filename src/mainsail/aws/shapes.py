"""Input validation driven by botocore's service model: what the AWS service itself checks of a JSON
request before the operation runs (Coral's constraints), for every operation at once.

:class:`InputCheck` walks an operation's input against its shape in botocore's model: members of the
wrong JSON type (a ``SerializationException``, as AWS answers), and the constraints the model carries:
``required`` members, string ``enum`` s, ``min`` / ``max`` (string and list lengths, map sizes, number
ranges) and ``pattern`` s. All constraint failures are reported together, worded as SageMaker words them
(``1 validation error detected: Value 'x' at 'sortBy' failed to satisfy constraint: ...``).

The model's patterns are Java regular expressions; those Python's :mod:`re` cannot read as written
(Unicode classes such as ``\\p{L}``) are translated to a class that accepts at least what Java's does,
and the few left that cannot be translated are not checked (:data:`UNCHECKED_PATTERNS`): a value is
never refused here that the service would accept.

mainsail's own extensions of a member's domain (a ``ModelDataUrl`` that is a local path, say) are
declared per operation and member path (``exempt``), so the model still checks everything else.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from mainsail.aws.errors import SerializationException, ValidationException
from mainsail.aws.protocol import Violations

#: Java's character classes as ranges Python's ``re`` reads inside ``[...]``, as wide as Java's or wider
#: (the POSIX ones, ``\\p{Alnum}`` ``\\p{Print}`` ``\\p{ASCII}``, are ASCII-only in Java too)
_CLASSES = {
    r"\p{L}": "A-Za-z\u00aa-\U0010ffff",
    r"\p{M}": "\u0300-\U0010ffff",
    r"\p{N}": "0-9\u00b2-\U0010ffff",
    r"\p{Alnum}": "0-9A-Za-z",
    r"\p{ASCII}": "\x00-\x7f",
    r"\p{Print}": "\x20-\x7e",
    r"\p{S}": "$+<=>^`|~\u00a2-\U0010ffff",
    r"\p{P}": "!-#%-*,-/:;?@\\[-\\]_{}\u00a1-\U0010ffff",
    r"\p{Z}": " \u00a0-\U0010ffff",
    r"\p{Cc}": "\x00-\x1f\x7f-\x9f",
    r"\p{Cf}": "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
               "\u2066-\u206f\ufeff\ufff9-\ufffb",
    # a UTF-16 surrogate pair range in Java is the supplementary planes in Python
    r"\uD800\uDC00-\uDBFF\uDFFF": "\U00010000-\U0010ffff",
}
_TOKEN_RE = re.compile("|".join(re.escape(k) for k in _CLASSES) + r"|\\z|\\.|\[|\]")

#: patterns of the loaded models that could not be translated, so are not checked
UNCHECKED_PATTERNS: set[str] = set()


def _translate(java: str) -> str:
    """``java`` with its Java-only constructs in Python's syntax: the classes above (bracketed when
    they stand outside ``[...]``) and ``\\z`` (the end of the input) as ``\\Z``."""
    out: list[str] = []
    depth, last = 0, 0
    for match in _TOKEN_RE.finditer(java):
        token = match.group(0)
        out.append(java[last:match.start()])
        last = match.end()
        if token in _CLASSES:
            out.append(_CLASSES[token] if depth else f"[{_CLASSES[token]}]")
        elif token == "\\z":
            out.append("\\Z")
        else:
            depth += 1 if token == "[" else -1 if token == "]" and depth else 0
            out.append(token)
    out.append(java[last:])
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def python_pattern(java: str) -> re.Pattern[str] | None:
    """The model's (Java) ``pattern`` as a Python regular expression; ``None`` if it cannot be read."""
    try:
        return re.compile(_translate(java))
    except re.error:
        UNCHECKED_PATTERNS.add(java)
        return None


_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def service_model(service: str) -> Any:
    """botocore's model of ``service`` (``botocore.model.ServiceModel``), loaded once (about 0.5 s for
    SageMaker's)."""
    model = _models.get(service)
    if model is None:
        with _models_lock:
            model = _models.get(service)
            if model is None:
                import botocore.session  # only when a JSON API is first called

                model = botocore.session.Session().get_service_model(service)
                _models[service] = model
    return model


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _shown(value: Any) -> Any:
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value[:8]) + (", ...]" if len(value) > 8 else "]")
    return value


class InputCheck:
    """Checks the inputs of ``service`` 's operations against botocore's model of it.

    ``exempt`` maps ``(operation, member path)`` (the path as the error names it, list indexes as
    ``*``: ``"CreateModel", "primaryContainer.modelDataUrl"``) to a predicate: a value it accepts is
    one of mainsail's extensions and is not checked against the model."""

    def __init__(self, service: str,
                 exempt: Mapping[tuple[str, str], Callable[[Any], bool]] | None = None,
                 error: Callable[[str], Exception] = ValidationException) -> None:
        self.service = service
        self.exempt = dict(exempt or {})
        #: what constraint failures raise: the service's own error (Logs: InvalidParameterException)
        self.error = error

    def operations(self) -> list[str]:
        """Every operation the model defines."""
        return list(service_model(self.service).operation_names)

    def check(self, operation: str, body: Mapping[str, Any]) -> None:
        """Raise what the service answers for ``body`` as ``operation`` 's input: a
        ``SerializationException`` for a member of the wrong type, a ``ValidationException`` listing
        every constraint it fails (or the service's own ``error``). An operation the model does not
        know is not checked."""
        model = service_model(self.service)
        if operation not in model.operation_names:
            return
        shape = model.operation_model(operation).input_shape
        if shape is None:
            return
        v = Violations()
        self._structure(operation, shape, body, "", v)
        v.raise_if_any(self.error)

    # -- the walk -------------------------------------------------------------------------------------

    def _value(self, operation: str, shape: Any, value: Any, path: str, v: Violations) -> None:
        exempt = self.exempt.get((operation, re.sub(r"\.\d+\.", ".*.", path)))
        if exempt is not None and exempt(value):
            return
        kind = shape.type_name
        if kind == "structure":
            self._structure(operation, shape, value, path, v)
        elif kind == "list":
            if not isinstance(value, list):
                raise _wrong_type(value, path, "a list")
            self._size(shape, value, path, v)
            for i, item in enumerate(value, start=1):
                if item is not None:
                    self._value(operation, shape.member, item, f"{path}.{i}.member", v)
        elif kind == "map":
            if not isinstance(value, dict):
                raise _wrong_type(value, path, "a map")
            self._size(shape, value, path, v)
            for what, sub, items in (("keys", shape.key, value.keys()), ("value", shape.value, value.values())):
                failed: list[str] = []
                for item in items:
                    for message in _scalar(sub, item, path):
                        if message not in failed:
                            failed.append(message)
                if failed:
                    v.add("{...}", path, f"Map {what} must satisfy constraint: [{', '.join(failed)}]")
        else:
            for message in _scalar(shape, value, path):
                v.add(_shown(value), path, message)

    def _structure(self, operation: str, shape: Any, value: Any, path: str, v: Violations) -> None:
        if not isinstance(value, Mapping):
            raise _wrong_type(value, path or "the input", "a structure")
        prefix = f"{path}." if path else ""
        for name in shape.required_members:
            if value.get(name) is None:
                v.add(None, prefix + _lower_first(name), "Member must not be null")
        for name, member in shape.members.items():
            item = value.get(name)
            if item is not None:
                self._value(operation, member, item, prefix + _lower_first(name), v)

    @staticmethod
    def _size(shape: Any, value: list[Any] | dict[Any, Any], path: str, v: Violations) -> None:
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and len(value) < low:
            v.add(_shown(value), path, f"Member must have length greater than or equal to {low}")
        if high is not None and len(value) > high:
            v.add(_shown(value), path, f"Member must have length less than or equal to {high}")


def _wrong_type(value: Any, path: str, expected: str) -> SerializationException:
    return SerializationException(f"Expected {expected} at '{path}', found {type(value).__name__} "
                                  f"{str(_shown(value))[:64]!r}.")


_NUMBERS = ("integer", "long", "float", "double")


def _scalar(shape: Any, value: Any, path: str) -> list[str]:
    """The constraints a scalar ``value`` fails (its type is checked first: a wrong one raises)."""
    kind, meta = shape.type_name, shape.metadata
    if kind == "string":
        if not isinstance(value, str):
            raise _wrong_type(value, path, "a string")
        failed = []
        enum = meta.get("enum")
        if enum and value not in enum:
            failed.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        low, high = meta.get("min"), meta.get("max")
        if low is not None and len(value) < low:
            failed.append(f"Member must have length greater than or equal to {low}")
        if high is not None and len(value) > high:
            failed.append(f"Member must have length less than or equal to {high}")
        pattern = meta.get("pattern")
        if pattern:
            compiled = python_pattern(pattern)
            if compiled is not None and not compiled.fullmatch(value):
                failed.append(f"Member must satisfy regular expression pattern: {pattern}")
        return failed
    if kind in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(value, path, "a number")
        if kind in ("integer", "long") and isinstance(value, float) and not value.is_integer():
            raise _wrong_type(value, path, "an integer")
        failed = []
        low, high = meta.get("min"), meta.get("max")
        if low is not None and value < low:
            failed.append(f"Member must have value greater than or equal to {low:g}")
        if high is not None and value > high:
            failed.append(f"Member must have value less than or equal to {high:g}")
        return failed
    if kind == "boolean" and not isinstance(value, bool):
        raise _wrong_type(value, path, "a boolean")
    if kind == "timestamp" and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
        raise _wrong_type(value, path, "a timestamp")
    if kind == "blob" and not isinstance(value, str):
        raise _wrong_type(value, path, "base64-encoded bytes")
    if kind in ("structure", "list", "map"):  # a key or value of a map that is itself a container
        if not isinstance(value, (dict, list)):
            raise _wrong_type(value, path, f"a {kind}")
    return []


class HeaderCheck:
    """The string members a REST operation takes from request headers (the runtime API's
    ``Content-Type``, ``X-Amzn-SageMaker-Custom-Attributes``, ...), checked against botocore's model
    of ``service`` on the hot path: one dictionary lookup per request header, the model read once
    (:meth:`load`; by the first check if not before). Only the headers present are checked, and only
    their constraints (length, pattern, enum); ``exempt`` as for :class:`InputCheck`."""

    def __init__(self, service: str, operation: str, *,
                 exempt: Mapping[str, Callable[[Any], bool]] | None = None,
                 error: Callable[[str], Exception] = ValidationException) -> None:
        self.service = service
        self.operation = operation
        self.exempt = dict(exempt or {})
        self.error = error
        self._headers: dict[bytes, _Header] | None = None

    def load(self) -> None:
        """Read the model's header members (blocks for a moment: call it off the event loop)."""
        shape = service_model(self.service).operation_model(self.operation).input_shape
        self._headers = {
            str(member.serialization["name"]).lower().encode("latin-1"): _Header(_lower_first(name), member)
            for name, member in shape.members.items()
            if member.serialization.get("location") == "header" and member.type_name == "string"}

    def check(self, raw_headers: list[tuple[bytes, bytes]]) -> None:
        """Raise ``error`` listing the constraints the headers (ASGI's, names in lower case) fail."""
        headers = self._headers
        if headers is None:
            self.load()
            headers = self._headers
            assert headers is not None
        v: Violations | None = None
        for name, raw in raw_headers:
            known = headers.get(name)
            if known is None:
                continue
            value = raw.decode("latin-1")
            if known.passes(value):
                continue
            exempt = self.exempt.get(known.path)
            if exempt is not None and exempt(value):
                continue
            for message in _scalar(known.shape, value, known.path):
                v = v or Violations()
                v.add(value, known.path, message)
        if v is not None:
            v.raise_if_any(self.error)


class _Header:
    """A header member's constraints, read from the model once (a shape's ``metadata`` is rebuilt on
    each read), for the quick test of a value that passes them all."""

    __slots__ = ("enum", "high", "low", "path", "regex", "shape")

    def __init__(self, path: str, shape: Any) -> None:
        meta = shape.metadata
        self.path, self.shape = path, shape
        self.low: int = meta.get("min", 0)
        self.high: int | None = meta.get("max")
        self.enum: frozenset[str] | None = frozenset(meta["enum"]) if meta.get("enum") else None
        self.regex = python_pattern(meta["pattern"]) if meta.get("pattern") else None

    def passes(self, value: str) -> bool:
        return (self.low <= len(value) and (self.high is None or len(value) <= self.high)
                and (self.enum is None or value in self.enum)
                and (self.regex is None or self.regex.fullmatch(value) is not None))
