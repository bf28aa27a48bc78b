"""CloudWatch's errors: each carries its query-protocol ``code`` (what every client finally sees, the
service being ``awsQueryCompatible``), the model's error ``shape`` (the ``__type`` of JSON and CBOR
bodies), its HTTP status and whether the sender is at fault (the ``x-amzn-query-error`` header's
second half)."""

from __future__ import annotations

from mainsail.aws.errors import ControlError

SHAPE_PREFIX = "com.amazonaws.cloudwatch#"


class CloudWatchError(ControlError):
    """Base of the errors CloudWatch answers (400, the sender's fault, unless a subclass says)."""

    code = "InvalidParameterValue"
    shape = "InvalidParameterValueException"
    sender = True


class InvalidParameterValue(CloudWatchError):
    """A parameter's value is bad or out of range."""

    code = "InvalidParameterValue"
    shape = "InvalidParameterValueException"


class ValidationError(CloudWatchError):
    """An input that fails the model's constraints (``1 validation error detected: ...``), as CloudWatch's
    front end answers it (no shape in the model)."""

    code = "ValidationError"
    shape = "ValidationError"


class MissingParameter(CloudWatchError):
    """A required parameter is missing."""

    code = "MissingParameter"
    shape = "MissingRequiredParameterException"


class InvalidParameterCombination(CloudWatchError):
    """Parameters were used together that cannot be, or one needs another that is absent."""

    code = "InvalidParameterCombination"
    shape = "InvalidParameterCombinationException"


class ResourceNotFound(CloudWatchError):
    """The named alarm does not exist (404)."""

    status_code = 404
    code = "ResourceNotFound"
    shape = "ResourceNotFound"


class LimitExceeded(CloudWatchError):
    """A quota (alarms per account) is reached."""

    code = "LimitExceeded"
    shape = "LimitExceededFault"


class InvalidNextToken(CloudWatchError):
    """The NextToken was not one this server gave."""

    code = "InvalidNextToken"
    shape = "InvalidNextToken"


def bad_next_token() -> InvalidNextToken:
    """What CloudWatch answers for a ``NextToken`` it did not give."""
    return InvalidNextToken("The service couldn't process the NextToken provided.")


class InvalidFormat(CloudWatchError):
    """``StateReasonData`` is not JSON."""

    code = "InvalidFormat"
    shape = "InvalidFormatFault"


class InvalidAction(CloudWatchError):
    """The operation is not one this server implements."""

    code = "InvalidAction"
    shape = "InvalidAction"


class InternalServiceError(CloudWatchError):
    """An unexpected failure (500, the receiver's fault)."""

    status_code = 500
    code = "InternalServiceError"
    shape = "InternalServiceFault"
    sender = False


def wire_error(exc: ControlError) -> tuple[str, str, bool]:
    """(query code, ``__type``, sender at fault) of any control-plane error raised while serving CloudWatch
    (the model checks raise the shared ``SerializationException``)."""
    if isinstance(exc, CloudWatchError):
        return exc.code, SHAPE_PREFIX + exc.shape, exc.sender
    return exc.code, SHAPE_PREFIX + exc.code, exc.status_code < 500
