"""The runtime API's errors, as exceptions rendered into the AWS error response in one place.

Anything on the request path (the router, target-model routing, traffic's cold starts and throttling)
raises a :class:`RuntimeApiError`; :func:`runtime_api` wraps a route's endpoint and answers it as
botocore parses a runtime error: ``X-Amzn-ErrorType: <code>`` and a JSON body with ``message`` (and
the error's extra fields). The asynchronous inference worker catches the same exceptions and keeps
their :attr:`~RuntimeApiError.message` as the failure text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mainsail.aws.identity import ACCOUNT
from mainsail.backends.base import Upstream
from mainsail.drain import drain_body

#: the largest InvokeEndpoint body (6 MB), as on SageMaker
MAX_PAYLOAD = 6 * 1024 * 1024


class RuntimeApiError(Exception):
    """A runtime API error: HTTP ``status``, ``X-Amzn-ErrorType`` ``code``, the body's ``message``
    and extra body fields (``OriginalStatusCode``, ``LogStreamArn``...)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra
        #: the request body was left partly unread (:mod:`mainsail.drain`): the answer closes the connection
        self.close_connection = False

    def response(self) -> Response:
        """The error as botocore parses it: ``X-Amzn-ErrorType`` + a JSON body with ``message``."""
        headers = {"X-Amzn-ErrorType": self.code}
        if self.close_connection:
            headers["Connection"] = "close"
        return Response(json.dumps({"message": self.message, **self.extra}), status_code=self.status,
                        media_type="application/json", headers=headers)


class ValidationError(RuntimeApiError):
    """400 ``ValidationError``: the request cannot be served as asked."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "ValidationError", message)


class ServiceUnavailable(RuntimeApiError):
    """503 ``ServiceUnavailable``: no instance can take the request now."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "ServiceUnavailable", message)


class Throttled(RuntimeApiError):
    """429 ``ThrottlingException``: a serverless variant is at its MaxConcurrency."""

    def __init__(self, message: str) -> None:
        super().__init__(429, "ThrottlingException", message)


class TargetModelNotReady(RuntimeApiError):
    """429 ``ModelNotReadyException``: a multi-model endpoint's target model is still loading."""

    def __init__(self, message: str) -> None:
        super().__init__(429, "ModelNotReadyException", message)


class ModelError(RuntimeApiError):
    """424 ``ModelError``: the instance failed the request (never a retried 5xx)."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(424, "ModelError", message, **extra)


class InstanceUnreachable(ModelError):
    """The 424 for an instance that could not be reached (it died with the request in flight): the
    runtime API answers it as any ModelError; asynchronous inference tries the request again."""


def model_error(upstream: Upstream, log_arn: str, source: str = "primary") -> ModelError:
    """An instance's 4xx/5xx answer as the runtime's ``ModelError``."""
    kind = "client" if upstream.status < 500 else "server"
    text = upstream.text
    return ModelError(
        f'Received {kind} error ({upstream.status}) from {source} with message "{text}". '
        f"See {log_arn} in account {ACCOUNT} for more information.",
        OriginalStatusCode=upstream.status, OriginalMessage=text, LogStreamArn=log_arn,
        ErrorCode=f"{kind.upper()}_ERROR_FROM_MODEL")


def payload_too_large() -> ValidationError:
    """A real-time request body over :data:`MAX_PAYLOAD`."""
    return ValidationError(f"Request payload size exceeds the limit of {MAX_PAYLOAD} bytes "
                           f"({MAX_PAYLOAD // (1024 * 1024)} MB).")


async def refuse_payload(request: Request) -> ValidationError:
    """:func:`payload_too_large` for a body still coming in, once its rest is read and thrown away
    (:func:`mainsail.drain.drain_body`), so the client reads the answer instead of a reset connection."""
    error = payload_too_large()
    error.close_connection = not await drain_body(request.receive, request.headers)
    return error


Endpoint = Callable[[Request], Awaitable[Response]]


def runtime_api(endpoint: Endpoint) -> Endpoint:
    """A route endpoint that answers the :class:`RuntimeApiError` ``endpoint`` raises (the one place
    runtime errors become responses)."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except RuntimeApiError as exc:
            return exc.response()

    return answer
