"""AWS JSON 1.1 building blocks shared by every emulated JSON service: the content type, SageMaker-worded
validation (``Violations``), required members, NextToken pagination and the response."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from mainsail.aws.errors import SerializationException, ValidationException

CONTENT_TYPE = "application/x-amz-json-1.1"


@dataclass
class Violations:
    """Collects constraint failures and raises them as one SageMaker-worded ValidationException."""

    messages: list[str] = field(default_factory=list)

    def add(self, value: Any, path: str, constraint: str) -> None:
        shown = "null" if value is None else f"'{value}'"
        self.messages.append(f"Value {shown} at '{path}' failed to satisfy constraint: {constraint}")

    def required(self, value: Any, path: str) -> bool:
        if value is None:
            self.add(None, path, "Member must not be null")
            return False
        return True

    def string(self, value: Any, path: str, *, max_len: int, pattern: str | None = None,
               regex: re.Pattern[str] | None = None) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            self.add(value, path, "Member must be a string")
            return
        if len(value) > max_len:
            self.add(value, path, f"Member must have length less than or equal to {max_len}")
        if pattern is not None:
            compiled = regex or re.compile(pattern)
            if not compiled.fullmatch(value):
                self.add(value, path, f"Member must satisfy regular expression pattern: {pattern}")

    def number(self, value: Any, path: str, *, minimum: float | None = None,
               maximum: float | None = None) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(value, path, "Member must be a number")
            return
        if minimum is not None and value < minimum:
            self.add(value, path, f"Member must have value greater than or equal to {minimum:g}")
        if maximum is not None and value > maximum:
            self.add(value, path, f"Member must have value less than or equal to {maximum:g}")

    def length(self, value: Any, path: str, *, maximum: int, minimum: int = 0) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            self.add(value, path, "Member must be a list")
            return
        if len(value) < minimum:
            self.add(value, path, f"Member must have length greater than or equal to {minimum}")
        if len(value) > maximum:
            self.add(value, path, f"Member must have length less than or equal to {maximum}")

    def raise_if_any(self, error: Callable[[str], Exception] = ValidationException) -> None:
        """Raise ``error`` (SageMaker's ValidationException; CloudWatch Logs says InvalidParameterException)
        listing every failure, if there is one."""
        if not self.messages:
            return
        n = len(self.messages)
        noun = "error" if n == 1 else "errors"
        raise error(f"{n} validation {noun} detected: " + "; ".join(self.messages))


def require(body: dict[str, Any], member: str) -> str:
    """``body[member]`` as a string; a ValidationException worded as SageMaker's when it is missing or not one."""
    value = body.get(member)
    if not isinstance(value, str):
        v = Violations()
        path = member[:1].lower() + member[1:]
        v.add(value, path, "Member must not be null" if value is None else "Member must be a string")
        v.raise_if_any()
    return str(value)


def offset_token(offset: int) -> str:
    """The ``NextToken`` of a page that ends before ``offset`` (the offset, base64: opaque to clients)."""
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def token_offset(token: Any, invalid: Callable[[], Exception]) -> int:
    """Where the page ``token`` (:func:`offset_token`; none: 0) starts; ``invalid()`` is raised for a token
    that is not one."""
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(str(token).encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid() from None


def paginate(body: dict[str, Any], items: list[dict[str, Any]], key: str, *, default_max: int,
             min_max: int = 1, max_max: int = 100) -> dict[str, Any]:
    """One page of ``items`` under ``key``, from the request's ``MaxResults`` and ``NextToken``."""
    v = Violations()
    max_results = body.get("MaxResults")
    v.number(max_results, "maxResults", minimum=min_max, maximum=max_max)
    v.raise_if_any()
    limit = int(max_results) if max_results is not None else default_max
    offset = token_offset(body.get("NextToken"), lambda: ValidationException("Invalid pagination token."))
    page = items[offset:offset + limit]
    out: dict[str, Any] = {key: page}
    if offset + limit < len(items):
        out["NextToken"] = offset_token(offset + limit)
    return out


def json_body(raw: bytes) -> dict[str, Any]:
    """A JSON 1.1 request body: a JSON object (an empty body is ``{}``); SerializationException otherwise."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise SerializationException("Request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise SerializationException("Request body must be a JSON object.")
    return body


def respond(status: int, payload: dict[str, Any], request_id: str) -> Response:
    """A JSON 1.1 response carrying ``x-amzn-RequestId``."""
    return Response(json.dumps(payload), status_code=status, media_type=CONTENT_TYPE,
                    headers={"x-amzn-RequestId": request_id})
