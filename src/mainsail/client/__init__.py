"""mainsail's own Python API: deploy to and invoke a running ``mainsail up``, or load a model in-process.

Remote (``deploy``, ``endpoint``; :mod:`mainsail.client.endpoint`): the same boto3 ``sagemaker`` /
``sagemaker-runtime`` calls the ``mainsail deploy`` / ``invoke`` / ``delete`` commands make (they share
the functions of :mod:`mainsail.client.aws`), wrapped in an :class:`Endpoint` object. Every failure
raises :class:`MainsailClientError` (the API's AWS error code and message); a model that answers
4xx/5xx raises :class:`ModelInvocationError` (:mod:`mainsail.client.errors`).

In-process (``load``; :mod:`mainsail.client.local`): a :class:`LocalModel` runs the data plane's own
app (the very route ``mainsail serve`` answers ``/invocations`` with) without a server, so an
inference script can be unit-tested with the answers a deployed one would give.

This package only re-exports. Nothing heavy is imported at module level: boto3 is imported on the
first remote call, the serving stack by ``load``, numpy and pandas only when a body of theirs is sent.
"""

from __future__ import annotations

from mainsail.client.aws import (
    DEFAULT_IMAGE,
    DEFAULT_ROLE,
    DEFAULT_URL,
    NEEDS_BOTO3,
    POLL_INTERVAL,
    VARIANT,
    already_exist_message,
    boto3_client,
    client_error,
    create_resources,
    default_url,
    delete_resources,
    deployment_options,
    describe_or_none,
    error_code,
    error_message,
    existing_resources,
    is_missing,
    model_data_url,
    region,
    translated_errors,
    wait_for_endpoint,
    wait_gone,
)
from mainsail.client.bodies import CSV_TYPE, JSON_TYPE, NPY_TYPE, Response, encode_body
from mainsail.client.endpoint import Endpoint, deploy, endpoint
from mainsail.client.errors import DeploymentFailed, MainsailClientError, ModelInvocationError, WaitTimeout
from mainsail.client.local import LocalModel, load

__all__ = [
    "CSV_TYPE", "DEFAULT_IMAGE", "DEFAULT_ROLE", "DEFAULT_URL", "JSON_TYPE", "NEEDS_BOTO3", "NPY_TYPE",
    "POLL_INTERVAL", "VARIANT", "DeploymentFailed", "Endpoint", "LocalModel", "MainsailClientError",
    "ModelInvocationError", "Response", "WaitTimeout", "already_exist_message", "boto3_client", "client_error",
    "create_resources", "default_url", "delete_resources", "deploy", "deployment_options", "describe_or_none",
    "encode_body", "endpoint", "error_code", "error_message", "existing_resources", "is_missing", "load",
    "model_data_url", "region", "translated_errors", "wait_for_endpoint", "wait_gone",
]
