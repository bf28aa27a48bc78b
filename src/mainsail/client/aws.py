"""The boto3 side of the Python API: clients for a ``mainsail up``, and the steps the CLI shares.

The ``sagemaker`` / ``sagemaker-runtime`` clients, the create-model/config/endpoint sequence (undone
on a failure), the waits, the delete sequence, and the translation of botocore's errors into
:class:`~mainsail.client.errors.MainsailClientError`. ``mainsail deploy`` / ``invoke`` / ``delete``
(``mainsail.cli.endpoints``) and :class:`~mainsail.client.endpoint.Endpoint` both call these. boto3 is
imported on the first call that needs it, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mainsail.client.errors import MainsailClientError, ModelInvocationError, WaitTimeout

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8700"
DEFAULT_IMAGE = "mainsail"
DEFAULT_ROLE = "arn:aws:iam::000000000000:role/mainsail"
VARIANT = "AllTraffic"
#: Seconds between DescribeEndpoint polls (the API itself holds a Creating answer for a few seconds).
POLL_INTERVAL = 0.5
NEEDS_BOTO3 = "mainsail's client needs boto3: pip install 'mainsail[s3]'"
_SETTLING = ("Creating", "Updating", "SystemUpdating", "RollingBack")


def default_url() -> str:
    """``$MAINSAIL_URL``, else ``http://127.0.0.1:8700``."""
    return os.environ.get("MAINSAIL_URL") or DEFAULT_URL


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def boto3_client(url: str, service: str) -> Any:
    """A boto3 ``service`` client for the control plane at ``url``.

    Raises ``ImportError`` without boto3 and ``ValueError`` for a malformed ``url``. Credentials are
    the usual ones when configured (the control plane does not check them), dummy ones otherwise;
    no metadata-service probes. The runtime client does not retry (an invocation is not idempotent).
    """
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.get_session()
    resolver = core.get_component("credential_provider")
    for slow in ("iam-role", "container-role"):  # no metadata-service probes for a local API
        with contextlib.suppress(Exception):
            resolver.remove(slow)
    kwargs: dict[str, Any] = {"endpoint_url": url, "region_name": region()}
    if core.get_credentials() is None:  # the control plane does not check them: any will do
        kwargs.update(aws_access_key_id="mainsail", aws_secret_access_key="mainsail")
    if service == "sagemaker-runtime":
        kwargs["config"] = Config(retries={"max_attempts": 1}, read_timeout=120)
    else:
        kwargs["config"] = Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=60)
    return boto3.session.Session(botocore_session=core).client(service, **kwargs)


def error_code(exc: Any) -> str:
    """A botocore ``ClientError``'s AWS error code."""
    return str(exc.response.get("Error", {}).get("Code", "Error"))


def error_message(exc: Any) -> str:
    """A botocore ``ClientError``'s message."""
    error = exc.response.get("Error", {})
    return str(error.get("Message") or exc.response.get("message") or exc)


def is_missing(exc: Any) -> bool:
    """Whether a ClientError is the API's "Could not find ..." answer."""
    return error_code(exc) in ("ValidationException", "ResourceNotFound") and \
        "could not find" in error_message(exc).lower()


def describe_or_none(call: Callable[..., Any], **kwargs: Any) -> dict[str, Any] | None:
    """``call(**kwargs)``'s answer, or ``None`` when the resource does not exist."""
    from botocore.exceptions import ClientError

    try:
        answer: dict[str, Any] = call(**kwargs)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    return answer


def model_data_url(model: str | os.PathLike[str]) -> str:
    """MODEL as a ModelDataUrl: URLs kept, local directories and archives made absolute ``file://``.

    Raises ``MainsailClientError`` (code ``InvalidModel``) for anything else.
    """
    text = os.fspath(model)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in ("file", "s3"):
            raise MainsailClientError(
                f"unsupported model URL {text!r}: use a local path, a file:// or an s3:// URL", "InvalidModel")
        return text
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        return path.as_uri()
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise MainsailClientError(f"{text}: not a model directory or a model.tar.gz archive", "InvalidModel")
        return path.as_uri()
    raise MainsailClientError(f"{text}: no such model directory or archive", "InvalidModel")


def existing_resources(sm: Any, name: str) -> list[str]:
    """Which of model, endpoint config and endpoint NAME exist already."""
    found = []
    if describe_or_none(sm.describe_model, ModelName=name) is not None:
        found.append("model")
    if describe_or_none(sm.describe_endpoint_config, EndpointConfigName=name) is not None:
        found.append("endpoint config")
    if describe_or_none(sm.describe_endpoint, EndpointName=name) is not None:
        found.append("endpoint")
    return found


def already_exist_message(existing: list[str], name: str) -> str:
    return f"{' and '.join(existing)} {name} already exist{'s' if len(existing) == 1 else ''}"


def _quiet(message: str) -> None:
    logger.info("%s", message)


def deployment_options(*, serverless_memory_mb: int | None = None, max_concurrency: int | None = None,
                       async_output: str | None = None, async_failure: str | None = None,
                       multi_model: bool = False) -> dict[str, Any]:
    """The keyword arguments of :func:`create_resources` for a deployment type: serverless (memory
    and/or concurrency given), asynchronous (an output path given), multi-model (``model`` is a
    prefix of model archives)."""
    options: dict[str, Any] = {"multi_model": multi_model}
    if serverless_memory_mb is not None or max_concurrency is not None:
        options["serverless"] = {"MemorySizeInMB": serverless_memory_mb or 2048, "MaxConcurrency": max_concurrency or 5}
    if async_output:
        output = {"S3OutputPath": async_output}
        if async_failure:
            output["S3FailurePath"] = async_failure
        options["async_config"] = {"OutputConfig": output}
    return options


def create_resources(sm: Any, name: str, data_url: str, image: str, environment: Mapping[str, str],
                     instances: int, instance_type: str, *, log: Callable[[str], None] = _quiet,
                     serverless: Mapping[str, int] | None = None, async_config: Mapping[str, Any] | None = None,
                     multi_model: bool = False) -> None:
    """Create model, endpoint config and endpoint NAME; on a failure delete what was created, re-raise.
    ``serverless`` (a ServerlessConfig) replaces the instances; ``async_config`` is an
    AsyncInferenceConfig; ``multi_model`` makes the container ``Mode: MultiModel``."""
    undo: list[Callable[[], Any]] = []
    try:
        container: dict[str, Any] = {"Image": image, "ModelDataUrl": data_url}
        if multi_model:
            container["Mode"] = "MultiModel"
        if environment:
            container["Environment"] = dict(environment)
        sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=DEFAULT_ROLE)
        undo.append(lambda: sm.delete_model(ModelName=name))
        log(f"created model {name} ({data_url}{', multi-model' if multi_model else ''})")
        variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": name, "InitialVariantWeight": 1.0}
        if serverless:
            variant["ServerlessConfig"] = dict(serverless)
            shape = f"serverless, {serverless['MemorySizeInMB']} MB, max concurrency {serverless['MaxConcurrency']}"
        else:
            variant.update({"InitialInstanceCount": instances, "InstanceType": instance_type})
            shape = f"{instances} x {instance_type}"
        extra = {"AsyncInferenceConfig": dict(async_config)} if async_config else {}
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant], **extra)
        undo.append(lambda: sm.delete_endpoint_config(EndpointConfigName=name))
        log(f"created endpoint config {name} ({VARIANT}: {shape}{', asynchronous' if async_config else ''})")
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
        log(f"created endpoint {name}")
    except BaseException:
        for step in reversed(undo):
            with contextlib.suppress(Exception):
                step()
        if undo:
            log(f"removed what this deploy had created for {name}")
        raise


def wait_for_endpoint(sm: Any, name: str, timeout: float, *, doing: str = "created",
                      progress: Callable[[str, float], None] | None = None,
                      poll: float | None = None) -> dict[str, Any]:
    """Poll DescribeEndpoint until the endpoint leaves Creating/Updating; its last description.

    Raises ``WaitTimeout`` after ``timeout`` seconds and ``MainsailClientError`` (``EndpointGone``)
    when the endpoint disappears. ``progress(status, elapsed)`` is called before each pause.
    """
    start = time.monotonic()
    while True:
        described = describe_or_none(sm.describe_endpoint, EndpointName=name)
        if described is None:
            raise MainsailClientError(f"endpoint {name} disappeared while it was being {doing}", "EndpointGone")
        status = str(described.get("EndpointStatus"))
        if status not in _SETTLING:
            return described
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            raise WaitTimeout(name, status, timeout)
        if progress is not None:
            progress(status, elapsed)
        time.sleep(POLL_INTERVAL if poll is None else poll)


def wait_gone(sm: Any, name: str, timeout: float, *, poll: float | None = None) -> bool:
    """Poll until endpoint NAME no longer exists; ``False`` when it still does after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if describe_or_none(sm.describe_endpoint, EndpointName=name) is None:
            return True
        time.sleep(POLL_INTERVAL if poll is None else poll)
    return False


def delete_resources(sm: Any, name: str, *, url: str, keep_config: bool = False, keep_model: bool = False,
                     wait: bool = True, timeout: float = 120, say: Callable[[str], None] = _quiet,
                     warn: Callable[[str], None] = _quiet,
                     gone: Callable[[Any, str, float], bool] = wait_gone) -> None:
    """Delete endpoint NAME, then its endpoint config and its variants' models.

    With no endpoint, the model and endpoint config named NAME (a deploy's leftovers) are removed.
    ``say`` reports what was deleted, ``warn`` the oddities, ``gone(sm, name, timeout)`` waits.
    Raises ``MainsailClientError``: ``NotFound`` when there is nothing to delete, ``Timeout`` when
    the endpoint is still there after ``timeout`` seconds (its config and models are then kept).
    """
    from botocore.exceptions import ClientError

    described = describe_or_none(sm.describe_endpoint, EndpointName=name)
    if described is not None:
        config_name = str(described.get("EndpointConfigName") or name)
    else:
        # no endpoint: leftovers of a deploy by the same name are still cleaned up
        config_name = name
        leftovers = [kind for kind, found in (
            ("endpoint config", describe_or_none(sm.describe_endpoint_config, EndpointConfigName=name)),
            ("model", describe_or_none(sm.describe_model, ModelName=name))) if found is not None]
        if not leftovers or (keep_config and keep_model):
            raise MainsailClientError(f"endpoint {name} not found at {url}", "NotFound")
        warn(f"endpoint {name} not found; removing the {' and '.join(leftovers)} of that name")
    config = describe_or_none(sm.describe_endpoint_config, EndpointConfigName=config_name)
    if config is not None:
        models = list(dict.fromkeys(str(pv["ModelName"]) for pv in (
            *config.get("ProductionVariants", []), *config.get("ShadowProductionVariants", []))
            if pv.get("ModelName")))
    else:
        models = [name] if described is None else []
        if described is not None:
            warn(f"endpoint config {config_name} not found: its models are unknown, left as they are")
    if described is not None:
        try:
            sm.delete_endpoint(EndpointName=name)
        except ClientError as exc:
            if not is_missing(exc):
                raise
        if wait and not gone(sm, name, timeout):
            raise WaitTimeout(name, "Deleting", timeout, f"endpoint {name} still Deleting after {timeout:g} s; "
                              "its config and models are left in place")
        say(f"deleted endpoint {name}")
    if config is not None and not keep_config:
        try:
            sm.delete_endpoint_config(EndpointConfigName=config_name)
            say(f"deleted endpoint config {config_name}")
        except ClientError as exc:
            if not is_missing(exc):
                raise
            warn(f"endpoint config {config_name} was already gone")
    if not keep_model:
        for model in models:
            try:
                sm.delete_model(ModelName=model)
                say(f"deleted model {model}")
            except ClientError as exc:
                if not is_missing(exc):
                    raise
                if described is not None or config is not None:
                    warn(f"model {model} not found (already deleted)")


def client_error(exc: Any) -> MainsailClientError:
    """A botocore ``ClientError`` as a ``MainsailClientError`` (``ModelInvocationError`` for ModelError)."""
    code = error_code(exc)
    message = error_message(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "ModelError":
        original = exc.response.get("OriginalStatusCode")
        return ModelInvocationError(
            message, original_status_code=None if original is None else int(original),
            original_message=exc.response.get("OriginalMessage"), log_stream_arn=exc.response.get("LogStreamArn"),
            status_code=status)
    return MainsailClientError(message, code, status_code=status)


@contextlib.contextmanager
def translated_errors(url: str) -> Iterator[None]:
    """Re-raise what botocore raises as ``MainsailClientError`` (the original chained)."""
    try:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:
        raise MainsailClientError(NEEDS_BOTO3, "MissingDependency") from None
    try:
        yield
    except ClientError as exc:
        raise client_error(exc) from exc
    except (EndpointConnectionError, BotoConnectionError) as exc:
        raise MainsailClientError(f"no control plane at {url}: start it with `mainsail up`",
                                  "ConnectionError", status_code=503) from exc
    except ConnectionClosedError as exc:
        raise MainsailClientError(f"the control plane at {url} closed the connection (is it `mainsail up`?)",
                                  "ConnectionError", status_code=502) from exc
    except ReadTimeoutError as exc:
        raise MainsailClientError(f"the control plane at {url} did not answer in time", "Timeout",
                                  status_code=504) from exc
    except BotoCoreError as exc:
        raise MainsailClientError(str(exc), type(exc).__name__) from exc
