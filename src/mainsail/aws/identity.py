"""Who answers: the emulated account, the default region, and the ARNs built from them."""

from __future__ import annotations

import re

ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"

_CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/")


def region_of(authorization: str | None) -> str:
    """The region in a SigV4 ``Authorization`` header's credential scope (default us-east-1)."""
    match = _CREDENTIAL_RE.search(authorization or "")
    return match.group(1) if match else DEFAULT_REGION


def sagemaker_arn(region: str, kind: str, name: str) -> str:
    """A SageMaker resource's ARN; real SageMaker lower-cases the name inside it."""
    return f"arn:aws:sagemaker:{region}:{ACCOUNT}:{kind}/{name.lower()}"


def endpoint_log_group_arn(region: str, endpoint: str) -> str:
    """The CloudWatch Logs group ARN that runtime errors point at for ``endpoint``."""
    return f"arn:aws:logs:{region}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{endpoint}"
