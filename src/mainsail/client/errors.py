"""The Python API's errors: what ``mainsail.deploy`` / ``endpoint`` / ``load`` and their objects raise.

Every failure is a :class:`MainsailClientError` (a ``MainsailError``) carrying the control plane's AWS
error code; a model answering 4xx/5xx is a :class:`ModelInvocationError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mainsail.errors import MainsailError

if TYPE_CHECKING:
    from mainsail.client.bodies import Response
    from mainsail.client.endpoint import Endpoint


class MainsailClientError(MainsailError):
    """An error answered by the control plane (``code`` is its AWS error code) or met reaching it."""

    status_code = 400
    code = "ClientError"

    def __init__(self, message: str, code: str | None = None, *, status_code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class ModelInvocationError(MainsailClientError):
    """The model answered an error status (the runtime API's ``ModelError``, HTTP 424).

    ``original_status_code`` and ``original_message`` are the model's own status and body text; in
    process (:meth:`LocalModel.invoke`) ``response`` also holds the whole :class:`Response`.
    """

    status_code = 424
    code = "ModelError"

    def __init__(self, message: str, *, original_status_code: int | None, original_message: str | None,
                 log_stream_arn: str | None = None, response: Response | None = None,
                 status_code: int | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.original_status_code = original_status_code
        self.original_message = original_message
        self.log_stream_arn = log_stream_arn
        self.response = response


class DeploymentFailed(MainsailClientError):
    """The endpoint did not come (or stay) in service: ``failure_reason`` says why (its FailureReason)."""

    code = "DeploymentFailed"

    def __init__(self, message: str, *, endpoint: Endpoint, status: str, failure_reason: str | None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.failure_reason = failure_reason


class WaitTimeout(MainsailClientError):
    """The endpoint was still ``status`` after ``timeout`` seconds of waiting."""

    code = "Timeout"

    def __init__(self, name: str, status: str, timeout: float, message: str | None = None) -> None:
        super().__init__(message or f"endpoint {name} still {status} after {timeout:g} s")
        self.name = name
        self.status = status
        self.timeout = timeout
