"""User commands over the control plane's API: ``deploy``, ``endpoints``, ``describe``, ``invoke``, ``delete``.

Every command talks to a running ``mainsail up`` through the real boto3 ``sagemaker`` and
``sagemaker-runtime`` clients, exactly as a user's own scripts would. boto3 is imported inside the
commands so that the CLI stays importable without it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_URL = "http://127.0.0.1:8700"
DEFAULT_IMAGE = "mainsail"
DEFAULT_ROLE = "arn:aws:iam::000000000000:role/mainsail"
VARIANT = "AllTraffic"
#: Seconds between DescribeEndpoint polls (the API itself holds a Creating answer for a few seconds).
POLL_INTERVAL = 0.5

UrlOption = Annotated[str, typer.Option(
    "--url", envvar="MAINSAIL_URL", help="The control plane (`mainsail up`) [env MAINSAIL_URL]")]


class Fail(Exception):
    """A command's error: printed as ``error: <message>`` on stderr, then exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _console(*, stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200  # piped or captured: fold less than the 80 columns rich assumes
    return console


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@dataclass
class Api:
    """The two boto3 clients for one control plane URL, made on first use."""

    url: str
    _clients: dict[str, Any] = field(default_factory=dict)

    def _client(self, service: str) -> Any:
        if service in self._clients:
            return self._clients[service]
        try:
            import boto3
            import botocore.session
            from botocore.config import Config
        except ImportError:
            raise Fail("the commands need boto3: pip install 'mainsail[s3]'") from None
        core = botocore.session.get_session()
        resolver = core.get_component("credential_provider")
        for slow in ("iam-role", "container-role"):  # no metadata-service probes for a local API
            with contextlib.suppress(Exception):
                resolver.remove(slow)
        kwargs: dict[str, Any] = {"endpoint_url": self.url, "region_name": _region()}
        if core.get_credentials() is None:  # the control plane does not check them: any will do
            kwargs.update(aws_access_key_id="mainsail", aws_secret_access_key="mainsail")
        if service == "sagemaker-runtime":
            kwargs["config"] = Config(retries={"max_attempts": 1}, read_timeout=120)
        else:
            kwargs["config"] = Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=60)
        try:
            client = boto3.session.Session(botocore_session=core).client(service, **kwargs)
        except ValueError as exc:  # botocore rejects a malformed endpoint_url
            raise Fail(f"bad --url {self.url!r}: {exc}") from None
        self._clients[service] = client
        return client

    @property
    def sm(self) -> Any:
        return self._client("sagemaker")

    @property
    def runtime(self) -> Any:
        return self._client("sagemaker-runtime")

    def invoke_url(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/endpoints/{name}/invocations"


@contextlib.contextmanager
def _handled(url: str) -> Iterator[None]:
    """Turn what the API or the network raise into one-line errors and exit codes, never tracebacks."""
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
        _err("error: the commands need boto3: pip install 'mainsail[s3]'")
        raise typer.Exit(1) from None
    try:
        yield
    except Fail as exc:
        _err(f"error: {exc.message}")
        raise typer.Exit(exc.code) from None
    except (EndpointConnectionError, BotoConnectionError):
        _err(f"error: no control plane at {url}: start it with `mainsail up`")
        raise typer.Exit(1) from None
    except ConnectionClosedError:
        _err(f"error: the control plane at {url} closed the connection (is it `mainsail up`?)")
        raise typer.Exit(1) from None
    except ReadTimeoutError:
        _err(f"error: the control plane at {url} did not answer in time")
        raise typer.Exit(1) from None
    except ClientError as exc:
        _err(f"error: {_code(exc)}: {_message(exc)}")
        raise typer.Exit(1) from None
    except BotoCoreError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Error"))


def _message(exc: Any) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Message") or exc.response.get("message") or exc)


def _is_missing(exc: Any) -> bool:
    """Whether a ClientError is the API's "Could not find ..." answer."""
    return _code(exc) in ("ValidationException", "ResourceNotFound") and "could not find" in _message(exc).lower()


def _describe(call: Callable[..., Any], **kwargs: Any) -> dict[str, Any] | None:
    """``call(**kwargs)``'s answer, or ``None`` when the resource does not exist."""
    from botocore.exceptions import ClientError

    try:
        answer: dict[str, Any] = call(**kwargs)
    except ClientError as exc:
        if _is_missing(exc):
            return None
        raise
    return answer


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value is None else str(value)


def _weight(value: Any) -> str:
    return "-" if value is None else f"{float(value):g}"


_STATUS_STYLE = {"InService": "green", "Creating": "yellow", "Updating": "yellow",
                 "Deleting": "magenta", "Failed": "red"}


def _status(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


# -- deploy ------------------------------------------------------------------------------------


def model_data_url(model: str) -> str:
    """MODEL as a ModelDataUrl: URLs kept, local directories and archives made absolute ``file://``."""
    if "://" in model:
        scheme = model.split("://", 1)[0].lower()
        if scheme not in ("file", "s3"):
            raise Fail(f"unsupported model URL {model!r}: use a local path, a file:// or an s3:// URL", 2)
        return model
    path = Path(model).expanduser().resolve()
    if path.is_dir():
        return path.as_uri()
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise Fail(f"{model}: not a model directory or a model.tar.gz archive", 2)
        return path.as_uri()
    raise Fail(f"{model}: no such model directory or archive", 2)


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict (the last of a repeated key wins)."""
    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise Fail(f"--env {pair!r}: expected KEY=VALUE", 2)
        env[key.strip()] = value
    return env


def _existing(api: Api, name: str) -> list[str]:
    found = []
    if _describe(api.sm.describe_model, ModelName=name) is not None:
        found.append("model")
    if _describe(api.sm.describe_endpoint_config, EndpointConfigName=name) is not None:
        found.append("endpoint config")
    if _describe(api.sm.describe_endpoint, EndpointName=name) is not None:
        found.append("endpoint")
    return found


def _create(api: Api, name: str, url: str, image: str, env: dict[str, str], instances: int,
            instance_type: str) -> None:
    """Create model, endpoint config and endpoint NAME; on a failure delete what was created, re-raise."""
    undo: list[Callable[[], Any]] = []
    try:
        container: dict[str, Any] = {"Image": image, "ModelDataUrl": url}
        if env:
            container["Environment"] = env
        api.sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=DEFAULT_ROLE)
        undo.append(lambda: api.sm.delete_model(ModelName=name))
        _err(f"created model {name} ({url})")
        api.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
            "VariantName": VARIANT, "ModelName": name, "InitialInstanceCount": instances,
            "InstanceType": instance_type, "InitialVariantWeight": 1.0}])
        undo.append(lambda: api.sm.delete_endpoint_config(EndpointConfigName=name))
        _err(f"created endpoint config {name} ({VARIANT}: {instances} x {instance_type})")
        api.sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
        _err(f"created endpoint {name}")
    except BaseException:
        for step in reversed(undo):
            with contextlib.suppress(Exception):
                step()
        if undo:
            _err(f"removed what this deploy had created for {name}")
        raise


def _wait_in_service(api: Api, name: str, timeout: float) -> dict[str, Any]:
    """Poll DescribeEndpoint until the endpoint leaves Creating (or ``timeout`` seconds pass)."""
    console = _console(stderr=True)
    start = time.monotonic()
    with console.status(f"waiting for endpoint [bold]{name}[/bold] (Creating)") as spinner:
        while True:
            described = _describe(api.sm.describe_endpoint, EndpointName=name)
            if described is None:
                raise Fail(f"endpoint {name} disappeared while it was being created")
            status = str(described.get("EndpointStatus"))
            if status not in ("Creating", "Updating"):
                return described
            elapsed = time.monotonic() - start
            if elapsed >= timeout:
                raise Fail(f"endpoint {name} still {status} after {timeout:g} s: "
                           f"follow it with `mainsail describe {name}`")
            spinner.update(f"waiting for endpoint [bold]{name}[/bold] ({status}, {elapsed:.0f} s)")
            time.sleep(POLL_INTERVAL)


def deploy(
    model: Annotated[str, typer.Argument(
        help="Model directory, model.tar.gz, file:// URL or s3:// URL", show_default=False)],
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the model, endpoint config and endpoint",
                                      show_default=False)],
    instances: Annotated[int, typer.Option("--instances", min=1, help="Instances of the variant")] = 1,
    instance_type: Annotated[str, typer.Option("--instance-type", help="SageMaker instance type")] = "ml.m5.large",
    image: Annotated[str, typer.Option("--image", help="Container image URI recorded on the model")] = DEFAULT_IMAGE,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", help="KEY=VALUE for the container's environment (repeatable)")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the endpoint is being created")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait for InService")] = 600,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Create model, endpoint config and endpoint NAME from MODEL, then wait until it is InService."""
    api = Api(url)
    with _handled(url):
        data_url = model_data_url(model)
        environment = parse_env(env)
        existing = _existing(api, name)
        if existing:
            raise Fail(f"{' and '.join(existing)} {name} already exist{'s' if len(existing) == 1 else ''}: "
                       f"remove with `mainsail delete {name}` or pick another --name")
        _create(api, name, data_url, image, environment, instances, instance_type)
        if no_wait:
            typer.echo(f"endpoint {name} is Creating: follow it with `mainsail describe {name}`")
            return
        try:
            described = _wait_in_service(api, name, timeout)
        except KeyboardInterrupt:
            _err(f"stopped waiting: endpoint {name} is still being created (`mainsail describe {name}`)")
            raise typer.Exit(130) from None
        status = described.get("EndpointStatus")
        if status == "InService":
            typer.echo(f"endpoint {name} is InService: {api.invoke_url(name)}")
            return
        reason = described.get("FailureReason") or "(no reason given)"
        raise Fail(f"endpoint {name} is {status}: {reason}\n"
                   f"inspect it with `mainsail describe {name}`, remove it with `mainsail delete {name}`")


# -- endpoints / describe ----------------------------------------------------------------------


def _variants_text(variants: list[dict[str, Any]], *, desired_only: bool = False) -> str:
    parts = []
    for pv in variants:
        if desired_only:  # from an endpoint config: nothing runs yet
            count = f"0/{pv.get('InitialInstanceCount', '?')}"
            weight = _weight(pv.get("InitialVariantWeight", 1.0))
        else:
            count = f"{pv.get('CurrentInstanceCount', 0)}/{pv.get('DesiredInstanceCount', '?')}"
            weight = _weight(pv.get("CurrentWeight", pv.get("DesiredWeight")))
        parts.append(f"{pv.get('VariantName')} (w={weight}, {count})")
    return "\n".join(parts) or "-"


def endpoints(url: UrlOption = DEFAULT_URL) -> None:
    """List the endpoints: status, variants (weight, running/desired instances) and times."""
    from rich.markup import escape as esc
    from rich.table import Table

    api = Api(url)
    with _handled(url):
        summaries: list[dict[str, Any]] = []
        for page in api.sm.get_paginator("list_endpoints").paginate(SortBy="CreationTime", SortOrder="Descending"):
            summaries.extend(page.get("Endpoints", []))
        console = _console()
        if not summaries:
            console.print(f"no endpoints at {url}: create one with `mainsail deploy MODEL --name NAME`", markup=False)
            return
        table = Table(title=f"endpoints at {url}", title_justify="left")
        table.add_column("NAME", overflow="fold")
        table.add_column("STATUS")
        table.add_column("VARIANTS (weight, instances)", overflow="fold")
        table.add_column("CREATED")
        table.add_column("MODIFIED")
        for summary in summaries:
            name = str(summary["EndpointName"])
            status = str(summary.get("EndpointStatus", "?"))
            if status == "Creating":
                # DescribeEndpoint holds a Creating answer for a while: read the config instead
                config = _describe(api.sm.describe_endpoint_config, EndpointConfigName=name)
                described = _describe(api.sm.describe_endpoint, EndpointName=name) if config is None else None
                variants = (_variants_text(config.get("ProductionVariants", []), desired_only=True) if config
                            else _variants_text((described or {}).get("ProductionVariants", [])))
            else:
                described = _describe(api.sm.describe_endpoint, EndpointName=name)
                if described is None:  # deleted between the list and now
                    continue
                status = str(described.get("EndpointStatus", status))
                variants = _variants_text(described.get("ProductionVariants", []))
            table.add_row(esc(name), _status(status), esc(variants), _when(summary.get("CreationTime")),
                          _when(summary.get("LastModifiedTime")))
        console.print(table)


def describe(
    name: Annotated[str, typer.Argument(help="Endpoint name", show_default=False)],
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show an endpoint: status, config, per-variant table and the failure reason if any."""
    from rich.markup import escape as esc
    from rich.table import Table

    api = Api(url)
    with _handled(url):
        described = _describe(api.sm.describe_endpoint, EndpointName=name)
        if described is None:
            raise Fail(f"endpoint {name} not found at {url}")
        config_name = str(described.get("EndpointConfigName", ""))
        config = _describe(api.sm.describe_endpoint_config, EndpointConfigName=config_name) if config_name else None
        console = _console()
        status = str(described.get("EndpointStatus", "?"))
        console.print(f"[bold]Endpoint[/bold]   {esc(name)}")
        console.print(f"[bold]ARN[/bold]        {esc(str(described.get('EndpointArn', '-')))}")
        console.print(f"[bold]Status[/bold]     {_status(status)}")
        missing = "" if config or not config_name else " (missing)"
        console.print(f"[bold]Config[/bold]     {esc(config_name or '-')}{missing}")
        console.print(f"[bold]Created[/bold]    {_when(described.get('CreationTime'))}")
        console.print(f"[bold]Modified[/bold]   {_when(described.get('LastModifiedTime'))}")
        if status == "InService":
            console.print(f"[bold]Invoke[/bold]     {esc(api.invoke_url(name))}", soft_wrap=True)
        if described.get("FailureReason"):
            console.print("[bold red]FailureReason[/bold red]")
            console.print(str(described["FailureReason"]), markup=False, soft_wrap=True)
        config_variants = {str(pv.get("VariantName")): pv for pv in (config or {}).get("ProductionVariants", [])}
        table = Table(title="variants", title_justify="left")
        for column in ("VARIANT", "MODEL", "INSTANCE TYPE", "WEIGHT (current/desired)",
                       "INSTANCES (current/desired)", "MODEL DATA"):
            table.add_column(column, overflow="fold")
        for pv in described.get("ProductionVariants", []):
            variant = str(pv.get("VariantName"))
            cv = config_variants.get(variant, {})
            model_name = cv.get("ModelName")
            model = _describe(api.sm.describe_model, ModelName=model_name) if model_name else None
            container = (model or {}).get("PrimaryContainer") or ((model or {}).get("Containers") or [{}])[0]
            data = container.get("ModelDataUrl", "-") if model else ("(missing)" if model_name else "-")
            table.add_row(esc(variant), esc(model_name or "-"), esc(str(cv.get("InstanceType", "-"))),
                          f"{_weight(pv.get('CurrentWeight'))}/{_weight(pv.get('DesiredWeight'))}",
                          f"{pv.get('CurrentInstanceCount', 0)}/{pv.get('DesiredInstanceCount', '-')}", esc(str(data)))
        console.print(table)


# -- invoke ------------------------------------------------------------------------------------


def _read_body(body: str | None, body_file: str | None) -> bytes:
    if (body is None) == (body_file is None):
        raise Fail("give exactly one of --body TEXT, --body-file PATH ('-' for either reads stdin)", 2)
    if body == "-" or body_file == "-":
        return sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    if body is not None:
        return body.encode()
    assert body_file is not None
    try:
        return Path(body_file).expanduser().read_bytes()
    except OSError as exc:
        raise Fail(f"--body-file {body_file}: {exc.strerror or exc}", 2) from None


def invoke(
    name: Annotated[str, typer.Argument(help="Endpoint name", show_default=False)],
    body: Annotated[str | None, typer.Option("--body", "-b", help="Request body text ('-': stdin)")] = None,
    body_file: Annotated[str | None, typer.Option(
        "--body-file", "-f", help="File holding the request body ('-': stdin)")] = None,
    content_type: Annotated[str, typer.Option("--content-type", "-t", help="Body's MIME type")] = "application/json",
    accept: Annotated[str | None, typer.Option("--accept", "-a", help="Wanted response MIME type")] = None,
    target_variant: Annotated[str | None, typer.Option("--target-variant", help="Variant to invoke")] = None,
    custom_attributes: Annotated[str | None, typer.Option(
        "--custom-attributes", help="X-Amzn-SageMaker-Custom-Attributes for the model")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Report variant and content type on stderr")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Send one request to an endpoint; the response body goes to stdout unchanged."""
    api = Api(url)
    with _handled(url):
        payload = _read_body(body, body_file)
        kwargs: dict[str, Any] = {"EndpointName": name, "Body": payload, "ContentType": content_type}
        for key, value in (("Accept", accept), ("TargetVariant", target_variant),
                           ("CustomAttributes", custom_attributes)):
            if value is not None:
                kwargs[key] = value
        answer = api.runtime.invoke_endpoint(**kwargs)
        data: bytes = answer["Body"].read()
        if verbose:
            _err(f"variant: {answer.get('InvokedProductionVariant', '-')}, "
                 f"content type: {answer.get('ContentType', '-')}")
            if answer.get("CustomAttributes") is not None:
                _err(f"custom attributes: {answer['CustomAttributes']}")
        typer.echo(data, nl=False)
        if sys.stdout.isatty() and not data.endswith(b"\n"):
            typer.echo("")


# -- delete ------------------------------------------------------------------------------------


def _wait_gone(api: Api, name: str, timeout: float) -> bool:
    console = _console(stderr=True)
    deadline = time.monotonic() + timeout
    with console.status(f"deleting endpoint [bold]{name}[/bold]"):
        while time.monotonic() < deadline:
            if _describe(api.sm.describe_endpoint, EndpointName=name) is None:
                return True
            time.sleep(POLL_INTERVAL)
    return False


def delete(
    name: Annotated[str, typer.Argument(help="Endpoint name", show_default=False)],
    keep_config: Annotated[bool, typer.Option("--keep-config", help="Leave the endpoint config")] = False,
    keep_model: Annotated[bool, typer.Option("--keep-model", help="Leave the variants' models")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Do not wait for the endpoint to be gone")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait for the endpoint to go")] = 120,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Delete an endpoint, then its endpoint config and its variants' models."""
    from botocore.exceptions import ClientError

    api = Api(url)
    with _handled(url):
        described = _describe(api.sm.describe_endpoint, EndpointName=name)
        if described is not None:
            config_name = str(described.get("EndpointConfigName") or name)
        else:
            # no endpoint: leftovers of a deploy by the same name are still cleaned up
            config_name = name
            leftovers = [kind for kind, found in (
                ("endpoint config", _describe(api.sm.describe_endpoint_config, EndpointConfigName=name)),
                ("model", _describe(api.sm.describe_model, ModelName=name))) if found is not None]
            if not leftovers or (keep_config and keep_model):
                raise Fail(f"endpoint {name} not found at {url}")
            _err(f"endpoint {name} not found; removing the {' and '.join(leftovers)} of that name")
        config = _describe(api.sm.describe_endpoint_config, EndpointConfigName=config_name)
        if config is not None:
            models = list(dict.fromkeys(str(pv["ModelName"]) for pv in (
                *config.get("ProductionVariants", []), *config.get("ShadowProductionVariants", []))
                if pv.get("ModelName")))
        else:
            models = [name] if described is None else []
            if described is not None:
                _err(f"endpoint config {config_name} not found: its models are unknown, left as they are")
        if described is not None:
            try:
                api.sm.delete_endpoint(EndpointName=name)
            except ClientError as exc:
                if not _is_missing(exc):
                    raise
            if not no_wait:
                if not _wait_gone(api, name, timeout):
                    raise Fail(f"endpoint {name} still Deleting after {timeout:g} s; "
                               "its config and models are left in place")
            typer.echo(f"deleted endpoint {name}")
        if config is not None and not keep_config:
            try:
                api.sm.delete_endpoint_config(EndpointConfigName=config_name)
                typer.echo(f"deleted endpoint config {config_name}")
            except ClientError as exc:
                if not _is_missing(exc):
                    raise
                _err(f"endpoint config {config_name} was already gone")
        if not keep_model:
            for model in models:
                try:
                    api.sm.delete_model(ModelName=model)
                    typer.echo(f"deleted model {model}")
                except ClientError as exc:
                    if not _is_missing(exc):
                        raise
                    if described is not None or config is not None:
                        _err(f"model {model} not found (already deleted)")


def register(app: typer.Typer) -> None:
    """Add the control-plane user commands to ``app``."""
    app.command()(deploy)
    app.command()(endpoints)
    app.command()(describe)
    app.command()(invoke)
    app.command()(delete)
