"""The errors Application Auto Scaling answers besides ValidationException (``mainsail.aws.errors``)."""

from __future__ import annotations

from mainsail.aws.errors import ControlError


class ObjectNotFoundException(ControlError):
    """A scalable target, scaling policy or scheduled action that does not exist (400)."""

    code = "ObjectNotFoundException"


class InvalidNextTokenException(ControlError):
    """A ``NextToken`` this service did not hand out (400)."""

    code = "InvalidNextTokenException"


class LimitExceededException(ControlError):
    """Too many policies or scheduled actions for one scalable target (400)."""

    code = "LimitExceededException"
