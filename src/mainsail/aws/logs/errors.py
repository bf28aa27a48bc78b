"""CloudWatch Logs errors: JSON 1.1 bodies with a lower-case ``message`` key (the LogsError tree)."""

from __future__ import annotations

from mainsail.aws.errors import ControlError


class LogsError(ControlError):
    """A CloudWatch Logs error: JSON 1.1 ``{"__type": code, "message": text}`` (lower-case key)."""

    def to_aws(self) -> dict[str, str]:
        return {"__type": self.code, "message": self.message}


class InvalidParameterException(LogsError):
    code = "InvalidParameterException"


class ResourceNotFoundException(LogsError):
    code = "ResourceNotFoundException"

