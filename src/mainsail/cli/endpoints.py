"""User commands over the control plane's API: ``deploy``, ``endpoints``, ``describe``, ``invoke``, ``delete``.

Every command talks to a running ``mainsail up`` through the real boto3 ``sagemaker`` and
``sagemaker-runtime`` clients, exactly as a user's own scripts would. boto3 is imported inside the
commands so that the CLI stays importable without it. The steps themselves (clients, the
create-model/config/endpoint sequence, the waits, the delete sequence) live in ``mainsail.client``,
which the Python API (``mainsail.deploy`` ...) shares; this module adds the options and the output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from mainsail import client
from mainsail.client import (  # noqa: F401 - DEFAULT_ROLE, POLL_INTERVAL, VARIANT: still importable from here
    DEFAULT_IMAGE,
    DEFAULT_ROLE,
    DEFAULT_URL,
    POLL_INTERVAL,
    VARIANT,
    MainsailClientError,
    WaitTimeout,
)

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


@dataclass
class Api:
    """The two boto3 clients for one control plane URL, made on first use."""

    url: str
    _clients: dict[str, Any] = field(default_factory=dict)

    def _client(self, service: str) -> Any:
        if service in self._clients:
            return self._clients[service]
        try:
            made = client.boto3_client(self.url, service)
        except ImportError:
            raise Fail("the commands need boto3: pip install 'mainsail[s3]'") from None
        except ValueError as exc:  # botocore rejects a malformed endpoint_url
            raise Fail(f"bad --url {self.url!r}: {exc}") from None
        self._clients[service] = made
        return made

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
    """Turn what the API or the network raise into one-line errors and exit codes, never tracebacks
    (botocore's errors translated by :func:`mainsail.client.translated_errors`)."""
    try:
        with client.translated_errors(url):
            yield
    except Fail as exc:
        _err(f"error: {exc.message}")
        raise typer.Exit(exc.code) from None
    except MainsailClientError as exc:
        from_api = type(exc.__cause__).__name__ == "ClientError" or hasattr(exc.__cause__, "response")
        _err(f"error: {exc.code}: {exc.message}" if from_api else f"error: {exc.message}")
        raise typer.Exit(1) from None


_code = client.error_code
_message = client.error_message
_describe = client.describe_or_none


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
    try:
        return client.model_data_url(model)
    except MainsailClientError as exc:
        raise Fail(exc.message, 2) from None


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict (the last of a repeated key wins)."""
    env: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise Fail(f"--env {pair!r}: expected KEY=VALUE", 2)
        env[key.strip()] = value
    return env


def _wait_in_service(api: Api, name: str, timeout: float) -> dict[str, Any]:
    """Poll DescribeEndpoint until the endpoint leaves Creating (or ``timeout`` seconds pass)."""
    console = _console(stderr=True)
    with console.status(f"waiting for endpoint [bold]{name}[/bold] (Creating)") as spinner:
        def progress(status: str, elapsed: float) -> None:
            spinner.update(f"waiting for endpoint [bold]{name}[/bold] ({status}, {elapsed:.0f} s)")

        try:
            return client.wait_for_endpoint(api.sm, name, timeout, progress=progress)
        except WaitTimeout as exc:
            raise Fail(f"{exc.message}: follow it with `mainsail describe {name}`") from None


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
    serverless_memory: Annotated[int | None, typer.Option(
        "--serverless-memory", min=1024, max=6144,
        help="Serverless: MemorySizeInMB (scales to zero when idle) [default 2048 with --max-concurrency]")] = None,
    max_concurrency: Annotated[int | None, typer.Option(
        "--max-concurrency", min=1, max=200, help="Serverless: MaxConcurrency (429 beyond it)")] = None,
    async_output: Annotated[str | None, typer.Option(
        "--async-output", help="Asynchronous: S3OutputPath (s3:// or file://) for results")] = None,
    async_failure: Annotated[str | None, typer.Option(
        "--async-failure", help="Asynchronous: S3FailurePath for failures")] = None,
    multi_model: Annotated[bool, typer.Option(
        "--multi-model", help="Multi-model: MODEL is a prefix of model archives, invoked with --target-model")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Create model, endpoint config and endpoint NAME from MODEL, then wait until it is InService."""
    api = Api(url)
    with _handled(url):
        data_url = model_data_url(model)
        environment = parse_env(env)
        existing = client.existing_resources(api.sm, name)
        if existing:
            raise Fail(f"{client.already_exist_message(existing, name)}: "
                       f"remove with `mainsail delete {name}` or pick another --name")
        client.create_resources(api.sm, name, data_url, image, environment, instances, instance_type, log=_err,
                                **client.deployment_options(
                                    serverless_memory_mb=serverless_memory, max_concurrency=max_concurrency,
                                    async_output=async_output, async_failure=async_failure,
                                    multi_model=multi_model))
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
    target_model: Annotated[str | None, typer.Option(
        "--target-model", help="Multi-model endpoint: the model archive to use (relative to its prefix)")] = None,
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
        for key, value in (("Accept", accept), ("TargetVariant", target_variant), ("TargetModel", target_model),
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


def invoke_async(
    name: Annotated[str, typer.Argument(help="Endpoint name (an asynchronous endpoint)", show_default=False)],
    input_location: Annotated[str, typer.Option("--input", "-i", help="InputLocation: s3:// or file:// URL",
                                                show_default=False)],
    content_type: Annotated[str, typer.Option("--content-type", "-t", help="Input's MIME type")] = "application/json",
    accept: Annotated[str | None, typer.Option("--accept", "-a", help="Wanted result MIME type")] = None,
    inference_id: Annotated[str | None, typer.Option("--inference-id", help="Your id for the request")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Queue one request on an asynchronous endpoint; prints its id and where its result will be."""
    api = Api(url)
    with _handled(url):
        kwargs: dict[str, Any] = {"EndpointName": name, "InputLocation": input_location, "ContentType": content_type}
        for key, value in (("Accept", accept), ("InferenceId", inference_id)):
            if value is not None:
                kwargs[key] = value
        answer = api.runtime.invoke_endpoint_async(**kwargs)
        typer.echo(f"InferenceId: {answer['InferenceId']}")
        typer.echo(f"OutputLocation: {answer['OutputLocation']}")
        if answer.get("FailureLocation"):
            typer.echo(f"FailureLocation: {answer['FailureLocation']}")


# -- delete ------------------------------------------------------------------------------------


def _wait_gone(sm: Any, name: str, timeout: float) -> bool:
    console = _console(stderr=True)
    with console.status(f"deleting endpoint [bold]{name}[/bold]"):
        return client.wait_gone(sm, name, timeout)


def delete(
    name: Annotated[str, typer.Argument(help="Endpoint name", show_default=False)],
    keep_config: Annotated[bool, typer.Option("--keep-config", help="Leave the endpoint config")] = False,
    keep_model: Annotated[bool, typer.Option("--keep-model", help="Leave the variants' models")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Do not wait for the endpoint to be gone")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait for the endpoint to go")] = 120,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Delete an endpoint, then its endpoint config and its variants' models."""
    api = Api(url)
    with _handled(url):
        client.delete_resources(api.sm, name, url=url, keep_config=keep_config, keep_model=keep_model,
                                wait=not no_wait, timeout=timeout, say=typer.echo, warn=_err, gone=_wait_gone)


# -- env -----------------------------------------------------------------------------------------

#: Variables that would send a client elsewhere, or mean nothing with the dummy credentials.
ENV_UNSET = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
             "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_ENDPOINT_URL_SAGEMAKER",
             "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_LOGS",
             "AWS_ENDPOINT_URL_S3")


def default_bucket(region: str) -> str:
    """The bucket ``Session.default_bucket()`` would pick on AWS for the local account (the one
    STS GetCallerIdentity answers)."""
    from mainsail.aws.identity import ACCOUNT

    return f"sagemaker-{region}-{ACCOUNT}"


def sdk_config_text(region: str) -> str:
    """The SageMaker Python SDK defaults config (``SAGEMAKER_USER_CONFIG_OVERRIDE``) for mainsail."""
    return (
        "# SageMaker Python SDK defaults for a local mainsail control plane (written by `mainsail env`).\n"
        "# DefaultS3Bucket spares Session.default_bucket() its STS GetCallerIdentity call, which the SDK\n"
        "# sends to https://sts.<region>.amazonaws.com whatever AWS_ENDPOINT_URL says; TelemetryOptOut\n"
        "# stops its telemetry requests.\n"
        "SchemaVersion: '1.0'\n"
        "SageMaker:\n"
        "  PythonSDK:\n"
        "    Modules:\n"
        "      TelemetryOptOut: true\n"
        "      Session:\n"
        f"        DefaultS3Bucket: {default_bucket(region)}\n"
    )


def env_vars(url: str, region: str, config_path: Path) -> dict[str, str]:
    """What an unmodified boto3 / SageMaker SDK script needs in its environment to use ``url``."""
    return {
        "AWS_ENDPOINT_URL": url,  # every service: SageMaker, runtime, STS, Logs, S3
        "AWS_ACCESS_KEY_ID": "mainsail",  # always: real credentials must not leave for AWS
        "AWS_SECRET_ACCESS_KEY": "mainsail",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probes
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config_path),
        "SAGEMAKER_VALIDATE_ROLE": "false",  # SDK v3: no IAM calls to check the role
        "MAINSAIL_URL": url,  # the mainsail commands
    }


def _quote_fish(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_env(values: dict[str, str], unset: tuple[str, ...], shell: str) -> str:
    """``values`` as commands of ``shell`` (sh, fish or powershell), ``unset`` removed first."""
    import shlex

    lines: list[str] = []
    if shell == "fish":
        lines += [f"set -e {name};" for name in unset]
        lines += [f"set -gx {name} {_quote_fish(value)};" for name, value in values.items()]
    elif shell == "powershell":
        lines += [f"Remove-Item Env:{name} -ErrorAction SilentlyContinue" for name in unset]
        lines += [f"$Env:{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in values.items()]
    else:
        lines.append("unset " + " ".join(unset))
        lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines)


def _valid_region(region: str) -> bool:
    import re

    return re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region) is not None


def env(
    url: UrlOption = DEFAULT_URL,
    region: Annotated[str, typer.Option(help="AWS_REGION / AWS_DEFAULT_REGION for the clients")] = "us-east-1",
    shell: Annotated[str, typer.Option(help="Syntax of the output: sh (bash, zsh), fish or powershell")] = "sh",
    home: Annotated[str | None, typer.Option(
        help="Where the SDK config file is written [env MAINSAIL_HOME; default ~/.mainsail]")] = None,
) -> None:
    """Print the environment for boto3 / SageMaker SDK scripts: eval "$(mainsail env)"."""
    from mainsail.backends.local import default_home

    if shell not in ("sh", "bash", "zsh", "fish", "powershell", "pwsh"):
        _err(f"error: unknown --shell {shell!r}: use sh, fish or powershell")
        raise typer.Exit(2)
    if not url.startswith(("http://", "https://")):
        _err(f"error: --url must be an http:// or https:// URL, not {url!r}")
        raise typer.Exit(2)
    if not _valid_region(region):
        _err(f"error: bad --region {region!r}")
        raise typer.Exit(2)
    root = Path(home).expanduser() if home else default_home()
    config = root.resolve() / f"sagemaker-sdk-config-{region}.yaml"
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        text = sdk_config_text(region)
        if not config.is_file() or config.read_text() != text:
            tmp = config.with_name(config.name + f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(config)
    except OSError as exc:
        _err(f"error: cannot write {config}: {exc}")
        raise typer.Exit(1) from None
    kind = {"bash": "sh", "zsh": "sh", "pwsh": "powershell"}.get(shell, shell)
    typer.echo(render_env(env_vars(url.rstrip("/"), region, config), ENV_UNSET, kind))
    if kind == "sh":
        typer.echo('# run: eval "$(mainsail env)"')


def register(app: typer.Typer) -> None:
    """Add the control-plane user commands to ``app``."""
    app.command()(deploy)
    app.command()(endpoints)
    app.command()(describe)
    app.command()(invoke)
    app.command("invoke-async")(invoke_async)
    app.command()(delete)
    app.command()(env)
    app.command()(transform)
    app.command("transform-jobs")(transform_jobs)


# -- batch transform -----------------------------------------------------------------------------

_JOB_STYLE = {"InProgress": "yellow", "Completed": "green", "Failed": "red", "Stopping": "magenta",
              "Stopped": "magenta"}


def _raw_describe_job(url: str, name: str) -> dict[str, Any] | None:
    """DescribeTransformJob as plain JSON, with the ``MainsailProgress`` botocore does not parse."""
    import json

    import httpx

    try:
        response = httpx.post(url.rstrip("/") + "/", timeout=10, content=json.dumps({"TransformJobName": name}),
                              headers={"X-Amz-Target": "SageMaker.DescribeTransformJob",
                                       "Content-Type": "application/x-amz-json-1.1"})
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    found: dict[str, Any] = response.json()
    return found


def _follow_job(api: Api, name: str, timeout: float) -> dict[str, Any]:
    """Poll the job with a progress bar (input bytes read, records done) until it settles."""
    import time

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[records]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=False) as bar:
        task = bar.add_task(name, total=None, records="")
        while True:
            raw = _raw_describe_job(api.url, name)
            desc = raw if raw is not None else api.sm.describe_transform_job(TransformJobName=name)
            progress = desc.get("MainsailProgress") or {}
            status = str(desc.get("TransformJobStatus", "?"))
            total = progress.get("InputBytes") or None
            bar.update(task, total=total, completed=progress.get("BytesRead", 0),
                       description=f"{name} {status}",
                       records=f"{progress.get('Records', 0):,} records, "
                               f"{progress.get('ObjectsDone', 0)}/{progress.get('Objects', 0)} files")
            if status not in ("InProgress", "Stopping"):
                return desc
            if time.monotonic() > deadline:
                raise WaitTimeout(name, status, timeout, f"transform job {name} still {status} after {timeout:g} s")
            time.sleep(0.5)


def transform(
    model: Annotated[str, typer.Argument(help="The model (as created by `mainsail deploy` or CreateModel)")],
    input_uri: Annotated[str, typer.Option("--input", help="s3://bucket/prefix (or file:///folder) to transform")],
    output: Annotated[str, typer.Option("--output", help="s3://bucket/prefix for the <input>.out files")],
    content_type: Annotated[str | None, typer.Option(
        "--content-type", help="Content-Type of the requests")] = "text/csv",
    split_type: Annotated[str, typer.Option(
        "--split-type", help="Line (a record per line) or None (whole files)")] = "Line",
    strategy: Annotated[str, typer.Option("--strategy", help="MultiRecord or SingleRecord")] = "MultiRecord",
    accept: Annotated[str | None, typer.Option("--accept", help="Accept of the requests")] = None,
    assemble_with: Annotated[str, typer.Option("--assemble-with", help="Line or None")] = "Line",
    instances: Annotated[int, typer.Option("--instances", help="Instances to run the model on")] = 1,
    instance_type: Annotated[str, typer.Option("--instance-type")] = "ml.m5.large",
    max_payload_mb: Annotated[int | None, typer.Option("--max-payload-mb", help="Largest request [default 6]")] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", help="MaxConcurrentTransforms [default: one per instance]")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Job name [default MODEL-<timestamp>]")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits")] = 24 * 3600.0,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Run a batch transform job (CreateTransformJob) of MODEL over every object under --input."""
    job = name or f"{model[:44]}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    strategy_value = None if split_type == "None" and strategy == "MultiRecord" else strategy
    request: dict[str, Any] = {
        "TransformJobName": job, "ModelName": model,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                           "SplitType": split_type, **({"ContentType": content_type} if content_type else {})},
        "TransformOutput": {"S3OutputPath": output, "AssembleWith": assemble_with,
                            **({"Accept": accept} if accept else {})},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instances},
    }
    if strategy_value:
        request["BatchStrategy"] = strategy_value
    if max_payload_mb is not None:
        request["MaxPayloadInMB"] = max_payload_mb
    if concurrency is not None:
        request["MaxConcurrentTransforms"] = concurrency
    api = Api(url)
    with _handled(url):
        arn = api.sm.create_transform_job(**request)["TransformJobArn"]
        _err(f"created transform job {job} ({arn})")
        if not wait:
            typer.echo(job)
            return
        desc = _follow_job(api, job, timeout)
        status = str(desc.get("TransformJobStatus"))
        progress = desc.get("MainsailProgress") or {}
        if status != "Completed":
            raise Fail(f"transform job {job} {status}: {desc.get('FailureReason', '')}".rstrip(": "))
        typer.echo(f"{job} Completed: {progress.get('Records', 0):,} records from {progress.get('Objects', 0)} "
                   f"files, output under {output}")


def transform_jobs(
    status: Annotated[str | None, typer.Option("--status", help="Only jobs in this status")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """List the batch transform jobs: status, times and why a job failed."""
    from rich.markup import escape as esc
    from rich.table import Table

    api = Api(url)
    with _handled(url):
        kwargs: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Descending"}
        if status:
            kwargs["StatusEquals"] = status
        summaries: list[dict[str, Any]] = []
        for page in api.sm.get_paginator("list_transform_jobs").paginate(**kwargs):
            summaries.extend(page.get("TransformJobSummaries", []))
        console = _console()
        if not summaries:
            console.print(f"no transform jobs at {url}: start one with `mainsail transform MODEL --input ... "
                          "--output ...`", markup=False)
            return
        table = Table(title=f"transform jobs at {url}", title_justify="left")
        for column in ("NAME", "STATUS", "CREATED", "ENDED", "FAILURE"):
            table.add_column(column, overflow="fold")
        for summary in summaries:
            job_status = str(summary.get("TransformJobStatus", "?"))
            style = _JOB_STYLE.get(job_status)
            table.add_row(esc(str(summary["TransformJobName"])),
                          f"[{style}]{job_status}[/{style}]" if style else job_status,
                          _when(summary.get("CreationTime")), _when(summary.get("TransformEndTime")),
                          esc(str(summary.get("FailureReason", ""))))
        console.print(table)
