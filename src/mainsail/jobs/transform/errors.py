"""The transform jobs' own exceptions (a job's failure, :class:`mainsail.jobs.storage.JobFailure`, is
shared with the storage it reads and writes)."""

from __future__ import annotations

from mainsail.aws.errors import ControlError


class ResourceInUse(ControlError):
    """A transform job of that name already exists (400)."""

    code = "ResourceInUse"


class Cancelled(Exception):
    """StopTransformJob, or mainsail up stopping."""
