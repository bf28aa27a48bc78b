"""mainsail's own Python API: deploy to and invoke a running ``mainsail up``, or load a model in-process.

Remote (``deploy``, ``endpoint``): the same boto3 ``sagemaker`` / ``sagemaker-runtime`` calls the
``mainsail deploy`` / ``invoke`` / ``delete`` commands make (they share the functions below), wrapped
in an :class:`Endpoint` object. Every failure raises :class:`MainsailClientError` (the API's AWS error
code and message); a model that answers 4xx/5xx raises :class:`ModelInvocationError`.

In-process (``load``): a :class:`LocalModel` runs the data plane's own app (the very route
``mainsail serve`` answers ``/invocations`` with) without a server, so an inference script can be
unit-tested with the answers a deployed one would give.

Nothing heavy is imported here at module level: boto3 is imported on the first remote call, the
serving stack by ``load``, numpy and pandas only when a body of theirs is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mainsail.errors import MainsailError

if TYPE_CHECKING:
    from mainsail.serve.runtime import ModelRuntime
    from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8700"
DEFAULT_IMAGE = "mainsail"
DEFAULT_ROLE = "arn:aws:iam::000000000000:role/mainsail"
VARIANT = "AllTraffic"
#: Seconds between DescribeEndpoint polls (the API itself holds a Creating answer for a few seconds).
POLL_INTERVAL = 0.5
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
NPY_TYPE = "application/x-npy"
NEEDS_BOTO3 = "mainsail's client needs boto3: pip install 'mainsail[s3]'"
_SETTLING = ("Creating", "Updating", "SystemUpdating", "RollingBack")


# -- errors ------------------------------------------------------------------------------------


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


# -- the boto3 clients and what the CLI commands share -------------------------------------------


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


# -- request bodies and responses ---------------------------------------------------------------


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def encode_body(body: Any, content_type: str | None = None) -> tuple[bytes, str]:
    """``body`` as request bytes and the Content-Type to send with them.

    ``bytes`` and ``str`` go as they are (``application/json`` unless ``content_type`` says
    otherwise); ``dict`` / ``list`` / ``tuple`` as JSON (JSON Lines, one item a line, when
    ``content_type`` is ``application/jsonlines``); a pandas DataFrame as CSV without header or index
    (JSON records, JSON Lines or Parquet when ``content_type`` asks); a numpy array as NPY
    (``application/x-npy``; JSON or CSV when ``content_type`` asks).
    """
    media = _media(content_type)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), content_type or JSON_TYPE
    if isinstance(body, str):
        return body.encode("utf-8"), content_type or JSON_TYPE
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(body, pd.DataFrame):
        if media in ("", CSV_TYPE):
            return body.to_csv(header=False, index=False, lineterminator="\n").encode("utf-8"), \
                content_type or CSV_TYPE
        if media == JSON_TYPE:
            return body.to_json(orient="records").encode("utf-8"), content_type or JSON_TYPE
        if media in ("application/jsonlines", "application/json-lines", "application/x-jsonlines"):
            return body.to_json(orient="records", lines=True).encode("utf-8"), content_type or media
        if "parquet" in media:
            buffer = io.BytesIO()
            body.to_parquet(buffer, index=False)
            return buffer.getvalue(), content_type or media
        raise TypeError(f"cannot send a DataFrame as {content_type!r}: use text/csv, application/json, "
                        "application/jsonlines or application/x-parquet, or pass bytes")
    np = sys.modules.get("numpy")
    if np is not None and isinstance(body, np.ndarray):
        if media in ("", NPY_TYPE):
            buffer = io.BytesIO()
            np.save(buffer, body, allow_pickle=False)
            return buffer.getvalue(), content_type or NPY_TYPE
        if media == JSON_TYPE:
            return _json_bytes(body.tolist()), content_type or JSON_TYPE
        if media == CSV_TYPE:
            buffer = io.BytesIO()
            np.savetxt(buffer, body if body.ndim > 1 else body.reshape(1, -1), delimiter=",", fmt="%s")
            return buffer.getvalue(), content_type or CSV_TYPE
        raise TypeError(f"cannot send a numpy array as {content_type!r}: use application/x-npy, "
                        "application/json or text/csv, or pass bytes")
    if isinstance(body, (dict, list, tuple)):
        if media in ("application/jsonlines", "application/json-lines", "application/x-jsonlines") \
                and isinstance(body, (list, tuple)):
            return b"".join(_json_bytes(item) + b"\n" for item in body), content_type or media
        return _json_bytes(body), content_type or JSON_TYPE
    raise TypeError(f"cannot send a {type(body).__name__} body: pass bytes, str, dict, list, "
                    "a numpy array or a pandas DataFrame")


def _json_bytes(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


@dataclass(frozen=True)
class Response:
    """One invocation's answer: ``body`` bytes, their ``content_type``, the ``variant`` that answered."""

    body: bytes
    content_type: str | None
    variant: str | None = None
    status: int = 200
    custom_attributes: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Every response header, names lower-cased (in-process answers only)."""

    @property
    def text(self) -> str:
        """``body`` decoded (the Content-Type's charset, else UTF-8)."""
        match = re.search(r"charset=([\w.-]+)", self.content_type or "", re.IGNORECASE)
        return self.body.decode(match.group(1) if match else "utf-8", errors="replace")

    def json(self) -> Any:
        """``body`` parsed as JSON."""
        import orjson

        return orjson.loads(self.body)


# -- endpoints on a control plane ---------------------------------------------------------------


_STAMP = r"\d{8}-\d{6}-\d{3}"


class Endpoint:
    """An endpoint of a running ``mainsail up``: describe, invoke, update (blue/green), delete."""

    def __init__(self, name: str, url: str | None = None) -> None:
        self.name = name
        self.url = url or default_url()
        self._clients: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, url={self.url!r})"

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            try:
                self._clients[service] = boto3_client(self.url, service)
            except ImportError:
                raise MainsailClientError(NEEDS_BOTO3, "MissingDependency") from None
            except ValueError as exc:  # botocore rejects a malformed endpoint_url
                raise MainsailClientError(f"bad control plane URL {self.url!r}: {exc}", "InvalidURL") from None
        return self._clients[service]

    @property
    def sm(self) -> Any:
        """The boto3 ``sagemaker`` client this endpoint uses."""
        return self._client("sagemaker")

    @property
    def runtime(self) -> Any:
        """The boto3 ``sagemaker-runtime`` client this endpoint uses."""
        return self._client("sagemaker-runtime")

    @property
    def invoke_url(self) -> str:
        return f"{self.url.rstrip('/')}/endpoints/{self.name}/invocations"

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return translated_errors(self.url)

    # -- reading ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """DescribeEndpoint's answer (without ``ResponseMetadata``)."""
        with self._errors():
            described: dict[str, Any] = self.sm.describe_endpoint(EndpointName=self.name)
        described.pop("ResponseMetadata", None)
        return described

    @property
    def status(self) -> str:
        """``EndpointStatus``: Creating, InService, Updating, Deleting or Failed."""
        return str(self.describe().get("EndpointStatus"))

    def invoke(self, body: Any, content_type: str | None = None, accept: str | None = None,
               target_variant: str | None = None, custom_attributes: str | None = None,
               target_model: str | None = None) -> Response:
        """InvokeEndpoint with ``body`` (see :func:`encode_body` for what a body may be);
        ``target_model``: the archive to use on a multi-model endpoint (relative to its prefix)."""
        payload, sent_type = encode_body(body, content_type)
        kwargs: dict[str, Any] = {"EndpointName": self.name, "Body": payload, "ContentType": sent_type}
        for key, value in (("Accept", accept), ("TargetVariant", target_variant),
                           ("CustomAttributes", custom_attributes), ("TargetModel", target_model)):
            if value is not None:
                kwargs[key] = value
        with self._errors():
            answer = self.runtime.invoke_endpoint(**kwargs)
            data: bytes = answer["Body"].read()
        return Response(data, answer.get("ContentType"), answer.get("InvokedProductionVariant"),
                        custom_attributes=answer.get("CustomAttributes"))

    def invoke_async(self, input_location: str, content_type: str | None = None, accept: str | None = None,
                     inference_id: str | None = None) -> dict[str, str]:
        """InvokeEndpointAsync on an asynchronous endpoint: the request is queued; the answer says
        where its result (``OutputLocation``) or failure (``FailureLocation``) will be written."""
        kwargs: dict[str, Any] = {"EndpointName": self.name, "InputLocation": input_location}
        for key, value in (("ContentType", content_type), ("Accept", accept), ("InferenceId", inference_id)):
            if value is not None:
                kwargs[key] = value
        with self._errors():
            answer = self.runtime.invoke_endpoint_async(**kwargs)
        return {k: str(answer[k]) for k in ("InferenceId", "OutputLocation", "FailureLocation") if k in answer}

    # -- waiting ----------------------------------------------------------------------------
    def wait(self, timeout: float = 600, *, doing: str = "updated") -> dict[str, Any]:
        """Wait until the endpoint leaves Creating/Updating; raise ``DeploymentFailed`` unless InService."""
        with self._errors():
            described = wait_for_endpoint(self.sm, self.name, timeout, doing=doing)
        described.pop("ResponseMetadata", None)
        status = str(described.get("EndpointStatus"))
        if status != "InService":
            reason = described.get("FailureReason")
            raise DeploymentFailed(f"endpoint {self.name} is {status}: {reason or '(no reason given)'}",
                                   endpoint=self, status=status, failure_reason=reason)
        return described

    # -- updating ---------------------------------------------------------------------------
    def _stamped(self) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")[:-3]
        return f"{self.name[:63 - len(stamp) - 1]}-{stamp}"

    def _is_ours(self, resource: str) -> bool:
        """Whether a model or config name is one ``deploy`` or ``update`` made for this endpoint."""
        if resource == self.name:
            return True
        match = re.fullmatch(rf"(.+)-({_STAMP})", resource)
        return match is not None and match.group(1) == self.name[:63 - len(match.group(2)) - 1]

    def update(self, model: str | os.PathLike[str] | None = None, instances: int | None = None,
               environment: Mapping[str, str] | None = None, wait: bool = True, *,
               timeout: float = 600) -> Endpoint:
        """Change the model, its environment and/or the instance count; returns ``self``.

        With ``model`` or ``environment``: a new model and endpoint config named ``<name>-<UTC
        timestamp>`` (same image, role and variants; ``environment`` merged over the current one) and
        UpdateEndpoint, which is blue/green: the old instances serve until the new ones answer. With
        only ``instances``: UpdateEndpointWeightsAndCapacities. ``wait`` waits for InService; after a
        blue/green switch the replaced config and models that ``deploy``/``update`` had made for this
        endpoint are deleted. A failed update is rolled back by the control plane: ``DeploymentFailed``
        with the reason (and the new model and config removed).
        """
        if model is None and instances is None and environment is None:
            raise ValueError("nothing to update: give model, instances and/or environment")
        with self._errors():
            described = self.sm.describe_endpoint(EndpointName=self.name)
            variants = described.get("ProductionVariants", [])
            if model is None and environment is None:
                self.sm.update_endpoint_weights_and_capacities(EndpointName=self.name, DesiredWeightsAndCapacities=[
                    {"VariantName": v["VariantName"], "DesiredInstanceCount": instances} for v in variants])
                if wait:
                    self.wait(timeout)
                return self
            old_config_name = str(described["EndpointConfigName"])
            old_config = self.sm.describe_endpoint_config(EndpointConfigName=old_config_name)
            old_variants = old_config.get("ProductionVariants", [])
            old_models = list(dict.fromkeys(str(pv["ModelName"]) for pv in old_variants))
            if len(old_models) != 1:
                raise MainsailClientError(f"endpoint {self.name} serves {len(old_models)} models: "
                                          "update it with boto3's UpdateEndpoint", "Unsupported")
            old_model = self.sm.describe_model(ModelName=old_models[0])
            container = dict(old_model.get("PrimaryContainer") or (old_model.get("Containers") or [{}])[0])
            new_container: dict[str, Any] = {"Image": container.get("Image") or DEFAULT_IMAGE}
            if model is not None:
                new_container["ModelDataUrl"] = model_data_url(model)
            elif container.get("ModelDataUrl"):
                new_container["ModelDataUrl"] = container["ModelDataUrl"]
            elif container.get("ModelDataSource"):
                new_container["ModelDataSource"] = container["ModelDataSource"]
            env = {**container.get("Environment", {}), **{str(k): str(v) for k, v in (environment or {}).items()}}
            if env:
                new_container["Environment"] = env
            current = {str(v.get("VariantName")): v for v in variants}
            new_variants = []
            for pv in old_variants:
                now = current.get(str(pv.get("VariantName")), {})
                count = instances if instances is not None else (now.get("DesiredInstanceCount")
                                                                 or now.get("CurrentInstanceCount")
                                                                 or pv.get("InitialInstanceCount"))
                weight = now.get("DesiredWeight", now.get("CurrentWeight", pv.get("InitialVariantWeight")))
                variant = {**pv, "InitialInstanceCount": count}
                if weight is not None:
                    variant["InitialVariantWeight"] = weight
                new_variants.append(variant)
            new_name = self._stamped()
            undo: list[Callable[[], Any]] = []
            try:
                self.sm.create_model(ModelName=new_name, PrimaryContainer=new_container,
                                     ExecutionRoleArn=old_model.get("ExecutionRoleArn") or DEFAULT_ROLE)
                undo.append(lambda: self.sm.delete_model(ModelName=new_name))
                for variant in new_variants:
                    variant["ModelName"] = new_name
                self.sm.create_endpoint_config(EndpointConfigName=new_name, ProductionVariants=new_variants)
                undo.append(lambda: self.sm.delete_endpoint_config(EndpointConfigName=new_name))
                self.sm.update_endpoint(EndpointName=self.name, EndpointConfigName=new_name)
            except BaseException:
                for step in reversed(undo):
                    with contextlib.suppress(Exception):
                        step()
                raise
            if not wait:
                return self
        after = self.wait(timeout)
        with self._errors():
            if after.get("EndpointConfigName") != new_name:  # rolled back: the old config still serves
                for step in reversed(undo):
                    with contextlib.suppress(Exception):
                        step()
                reason = after.get("FailureReason")
                raise DeploymentFailed(f"update of endpoint {self.name} was rolled back: "
                                       f"{reason or '(no reason given)'}", endpoint=self,
                                       status=str(after.get("EndpointStatus")), failure_reason=reason)
            if self._is_ours(old_config_name):
                with contextlib.suppress(Exception):
                    self.sm.delete_endpoint_config(EndpointConfigName=old_config_name)
            for old in old_models:
                if old != new_name and self._is_ours(old):
                    with contextlib.suppress(Exception):
                        self.sm.delete_model(ModelName=old)
        return self

    # -- deleting ---------------------------------------------------------------------------
    def delete(self, keep_config: bool = False, keep_model: bool = False, wait: bool = True, *,
               timeout: float = 120) -> None:
        """Delete the endpoint, then (unless kept) its endpoint config and its variants' models."""
        with self._errors():
            delete_resources(self.sm, self.name, url=self.url, keep_config=keep_config, keep_model=keep_model,
                             wait=wait, timeout=timeout)


def deploy(model: str | os.PathLike[str], name: str, instances: int = 1, *, url: str | None = None,
           instance_type: str = "ml.m5.large", environment: Mapping[str, str] | None = None,
           image: str | None = None, wait: bool = True, timeout: float = 600,
           serverless_memory_mb: int | None = None, max_concurrency: int | None = None,
           async_output: str | None = None, async_failure: str | None = None,
           multi_model: bool = False) -> Endpoint:
    """Create model, endpoint config and endpoint ``name`` from ``model`` on a running ``mainsail up``.

    ``model``: a model directory, a ``model.tar.gz``, a ``file://`` or an ``s3://`` URL. ``url``:
    the control plane (default ``$MAINSAIL_URL``, else ``http://127.0.0.1:8700``). With ``wait``,
    returns once the endpoint is InService, or raises ``DeploymentFailed`` with its FailureReason
    (the endpoint is left for inspection: ``exc.endpoint.delete()`` removes it) or ``WaitTimeout``.
    A failed create step removes what this call had created. Deployment types: serverless
    (``serverless_memory_mb`` / ``max_concurrency``), asynchronous (``async_output``, an s3:// or
    file:// path for results, ``async_failure`` for failures), multi-model (``multi_model=True``,
    ``model`` a prefix holding model archives, invoked with ``target_model=``).
    """
    endpoint = Endpoint(name, url)
    data_url = model_data_url(model)
    env = {str(k): str(v) for k, v in (environment or {}).items()}
    with endpoint._errors():
        existing = existing_resources(endpoint.sm, name)
        if existing:
            raise MainsailClientError(f"{already_exist_message(existing, name)}: delete with "
                                      f"mainsail.endpoint({name!r}).delete() or pick another name", "AlreadyExists")
        create_resources(endpoint.sm, name, data_url, image or DEFAULT_IMAGE, env, instances, instance_type,
                         **deployment_options(serverless_memory_mb=serverless_memory_mb,
                                              max_concurrency=max_concurrency, async_output=async_output,
                                              async_failure=async_failure, multi_model=multi_model))
    if wait:
        endpoint.wait(timeout, doing="created")
    return endpoint


def endpoint(name: str, url: str | None = None) -> Endpoint:
    """Attach to the existing endpoint ``name`` (raises ``MainsailClientError`` when there is none)."""
    attached = Endpoint(name, url)
    with attached._errors():
        if describe_or_none(attached.sm.describe_endpoint, EndpointName=name) is None:
            raise MainsailClientError(f"endpoint {name} not found at {attached.url}", "NotFound")
    return attached


# -- in process ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(environment: Mapping[str, str] | None) -> Iterator[None]:
    """``environment`` set in ``os.environ`` for the block, then the previous values restored."""
    if not environment:
        yield
        return
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update({str(k): str(v) for k, v in environment.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _LoopThread:
    """A private event loop in a daemon thread, so ``invoke`` works from sync and async callers alike."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mainsail-local", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class LocalModel:
    """A model loaded in this process behind the data plane's own app (no server, no socket).

    Build one with :func:`load`. :meth:`invoke` sends ``POST /invocations`` through the same ASGI
    app ``mainsail serve`` runs (payload limit, Accept defaults, handler chain, error bodies), so its
    status, body bytes and content type are what the server answers.
    """

    def __init__(self, runtime: ModelRuntime, settings: ServeSettings, app: Any, model_dir: Path,
                 script: Path | None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.model_dir = model_dir
        """The model directory (the extracted one for an archive)."""
        self.script = script
        """The inference script, or ``None`` for a built-in handler."""
        self._app = app
        self._loop: _LoopThread | None = _LoopThread()

    @property
    def handler(self) -> str:
        """The handler serving the model: ``script``, ``tabular``, ``pytorch``, ..."""
        return str(self.runtime.handler.name)

    def __repr__(self) -> str:
        return f"LocalModel({str(self.script or self.model_dir)!r}, handler={self.handler!r})"

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the predict threads and the private event loop (what the server does at shutdown)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self.runtime.close()
        loop.close()

    @property
    def closed(self) -> bool:
        return self._loop is None

    def request(self, method: str, path: str, body: bytes = b"",
                headers: Mapping[str, str] | None = None) -> Response:
        """Any request to the data plane's app (``/ping``, ``/execution-parameters``, ``/metrics`` ...)."""
        if self._loop is None:
            raise RuntimeError("this LocalModel is closed")
        status, out_headers, data = self._loop.run(self._call(method, path, body, dict(headers or {})))
        return Response(data, out_headers.get("content-type"), status=status,
                        custom_attributes=out_headers.get("x-amzn-sagemaker-custom-attributes"), headers=out_headers)

    async def _call(self, method: str, path: str, body: bytes,
                    headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        raw = [(b"host", b"localhost")]
        raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
        if method != "GET" or body:
            raw.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "headers": raw, "client": ("127.0.0.1", 0), "server": ("localhost", 8080),
            "state": {},
        }
        sent = False
        finished = asyncio.Event()
        status = 500
        out_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()  # the client stays connected until the response is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for key, value in message.get("headers", []):
                    name = key.decode("latin-1").lower()
                    text = value.decode("latin-1")
                    out_headers[name] = f"{out_headers[name]}, {text}" if name in out_headers else text
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    finished.set()

        try:
            await self._app(scope, receive, send)
        finally:
            finished.set()
        return status, out_headers, b"".join(chunks)

    def ping(self) -> bool:
        """``GET /ping`` answered 200 (the model is loaded)."""
        return self.request("GET", "/ping").status == 200

    def invoke(self, body: Any, content_type: str | None = None, accept: str | None = None,
               custom_attributes: str | None = None) -> Response:
        """``POST /invocations`` with ``body``; the answer exactly as ``mainsail serve`` gives it.

        ``body`` is encoded as :meth:`Endpoint.invoke` does (``bytes``/``str`` as they are, sent as
        ``application/json`` unless ``content_type`` says otherwise). An answer with a status of 400
        or more raises :class:`ModelInvocationError`: ``original_status_code`` is the status,
        ``original_message`` the JSON error body, ``response`` the whole answer.
        """
        payload, sent_type = encode_body(body, content_type)
        headers = {"content-type": sent_type}
        if accept is not None:
            headers["accept"] = accept
        if custom_attributes is not None:
            headers["x-amzn-sagemaker-custom-attributes"] = custom_attributes
        response = self.request("POST", "/invocations", payload, headers)
        if response.status >= 400:
            kind = "client" if response.status < 500 else "server"
            raise ModelInvocationError(
                f'Received {kind} error ({response.status}) from the model with message "{response.text}"',
                original_status_code=response.status, original_message=response.text, response=response)
        return response


def load(model_dir: str | os.PathLike[str], entry_point: str | None = None, *, source_dir: str | None = None,
         environment: Mapping[str, str] | None = None, framework: str | None = None) -> LocalModel:
    """Load a model in this process as one ``mainsail serve`` worker would; see :class:`LocalModel`.

    ``model_dir``: a model directory or ``model.tar.gz`` (extracted safely into
    ``$MAINSAIL_HOME/models``). ``entry_point``, ``source_dir``, ``framework``: as ``mainsail serve``'s
    options. ``environment``: the container environment (``SAGEMAKER_PROGRAM``,
    ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, your own variables ...), read for the settings and set in
    ``os.environ`` while the script is imported and ``model_fn`` runs, then restored. Raises
    ``ModelLoadError`` (a ``MainsailError``) when the model cannot load.
    """
    from mainsail.handlers import build_handler
    from mainsail.serve.app import create_app
    from mainsail.serve.model_dir import prepare_model
    from mainsail.serve.requirements import install_requirements, missing_requirements
    from mainsail.serve.runtime import ModelRuntime
    from mainsail.settings import ServeSettings

    given: dict[str, Any] = {"model_path": os.fspath(model_dir), "entry_point": entry_point,
                             "source_dir": source_dir, "framework": framework, "workers": 1}
    with _environ(environment):
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
        prepared = prepare_model(settings)
        # What run_server and the worker do before loading: code/requirements.txt, then sys.path.
        if prepared.code_dir is not None and (prepared.code_dir / "requirements.txt").is_file():
            requirements = prepared.code_dir / "requirements.txt"
            if settings.install_requirements:
                extra = str(install_requirements(requirements, settings.home / "requirements"))
                if extra not in sys.path:
                    sys.path.append(extra)
            elif missing := missing_requirements(requirements):
                logger.warning("%s is not satisfied (not installing, as asked): %s", requirements, "; ".join(missing))
        handler = build_handler(prepared.model_dir, prepared.script, framework=settings.framework,
                                model_name=settings.model_name, settings=settings)
        runtime = ModelRuntime.from_settings(handler, settings)
        try:
            runtime.load()
        except BaseException:
            runtime.close()
            raise
    app = create_app(runtime, settings, load_on_startup=False)
    return LocalModel(runtime, settings, app, prepared.model_dir, prepared.script)
