"""AWS-shaped control-plane errors, rendered as ``{"__type": code, "Message": text}`` with HTTP 400."""

from __future__ import annotations

from mainsail.errors import MainsailError


class ControlError(MainsailError):
    """Base of errors the SageMaker API answers; ``code`` becomes the body's ``__type``."""

    status_code = 400
    code = "ValidationException"

    def to_aws(self) -> dict[str, str]:
        """The JSON 1.1 error body botocore parses into ``Error.Code`` / ``Error.Message``."""
        return {"__type": self.code, "Message": self.message}


class ValidationException(ControlError):
    """Bad input, a missing resource or a duplicate one: SageMaker's catch-all (400)."""

    code = "ValidationException"


class ResourceNotFound(ControlError):
    """A modeled not-found error, used only by operations that declare it (400)."""

    code = "ResourceNotFound"


class UnknownOperationException(ControlError):
    """The ``X-Amz-Target`` names no operation this server implements (400)."""

    code = "UnknownOperationException"

    def __init__(self, target: str | None) -> None:
        self.target = target
        super().__init__(f"Unknown operation {target!r}" if target else "Missing X-Amz-Target header")


class SerializationException(ControlError):
    """The request body is not a JSON object (400)."""

    code = "SerializationException"
