"""User commands over the control plane's API: ``deploy``, ``endpoints``, ``describe``, ``invoke``,
``invoke-async``, ``delete``.

The steps themselves (clients, the create-model/config/endpoint sequence, the waits, the delete
sequence) live in :mod:`mainsail.client.aws`, which the Python API (``mainsail.deploy`` ...) shares;
this module adds the options and the output (:mod:`mainsail.cli.remote` has what the commands share).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mainsail.cli.remote import Api, Fail, UrlOption, console, err, handled, when
from mainsail.client import aws as client
from mainsail.client.aws import DEFAULT_IMAGE, DEFAULT_URL
from mainsail.client.errors import MainsailClientError, WaitTimeout

_describe = client.describe_or_none


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
    with console(stderr=True).status(f"waiting for endpoint [bold]{name}[/bold] (Creating)") as spinner:
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
    with handled(url):
        data_url = model_data_url(model)
        environment = parse_env(env)
        existing = client.existing_resources(api.sm, name)
        if existing:
            raise Fail(f"{client.already_exist_message(existing, name)}: "
                       f"remove with `mainsail delete {name}` or pick another --name")
        client.create_resources(api.sm, name, data_url, image, environment, instances, instance_type, log=err,
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
            err(f"stopped waiting: endpoint {name} is still being created (`mainsail describe {name}`)")
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
    with handled(url):
        summaries: list[dict[str, Any]] = []
        for page in api.sm.get_paginator("list_endpoints").paginate(SortBy="CreationTime", SortOrder="Descending"):
            summaries.extend(page.get("Endpoints", []))
        out = console()
        if not summaries:
            out.print(f"no endpoints at {url}: create one with `mainsail deploy MODEL --name NAME`", markup=False)
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
            table.add_row(esc(name), _status(status), esc(variants), when(summary.get("CreationTime")),
                          when(summary.get("LastModifiedTime")))
        out.print(table)


def describe(
    name: Annotated[str, typer.Argument(help="Endpoint name", show_default=False)],
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show an endpoint: status, config, per-variant table and the failure reason if any."""
    from rich.markup import escape as esc
    from rich.table import Table

    api = Api(url)
    with handled(url):
        described = _describe(api.sm.describe_endpoint, EndpointName=name)
        if described is None:
            raise Fail(f"endpoint {name} not found at {url}")
        config_name = str(described.get("EndpointConfigName", ""))
        config = _describe(api.sm.describe_endpoint_config, EndpointConfigName=config_name) if config_name else None
        out = console()
        status = str(described.get("EndpointStatus", "?"))
        out.print(f"[bold]Endpoint[/bold]   {esc(name)}")
        out.print(f"[bold]ARN[/bold]        {esc(str(described.get('EndpointArn', '-')))}")
        out.print(f"[bold]Status[/bold]     {_status(status)}")
        missing = "" if config or not config_name else " (missing)"
        out.print(f"[bold]Config[/bold]     {esc(config_name or '-')}{missing}")
        out.print(f"[bold]Created[/bold]    {when(described.get('CreationTime'))}")
        out.print(f"[bold]Modified[/bold]   {when(described.get('LastModifiedTime'))}")
        if status == "InService":
            out.print(f"[bold]Invoke[/bold]     {esc(api.invoke_url(name))}", soft_wrap=True)
        if described.get("FailureReason"):
            out.print("[bold red]FailureReason[/bold red]")
            out.print(str(described["FailureReason"]), markup=False, soft_wrap=True)
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
        out.print(table)


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
    stream: Annotated[bool, typer.Option(
        "--stream", "-s", help="InvokeEndpointWithResponseStream: print the parts as they arrive")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Send one request to an endpoint; the response body goes to stdout unchanged."""
    api = Api(url)
    with handled(url):
        payload = _read_body(body, body_file)
        kwargs: dict[str, Any] = {"EndpointName": name, "Body": payload, "ContentType": content_type}
        for key, value in (("Accept", accept), ("TargetVariant", target_variant), ("TargetModel", target_model),
                           ("CustomAttributes", custom_attributes)):
            if value is not None:
                kwargs[key] = value
        if stream:
            if target_model is not None:
                raise Fail("--stream cannot name a --target-model (InvokeEndpointWithResponseStream has none)", 2)
            _invoke_stream(api, kwargs, verbose)
            return
        answer = api.runtime.invoke_endpoint(**kwargs)
        data: bytes = answer["Body"].read()
        if verbose:
            err(f"variant: {answer.get('InvokedProductionVariant', '-')}, "
                 f"content type: {answer.get('ContentType', '-')}")
            if answer.get("CustomAttributes") is not None:
                err(f"custom attributes: {answer['CustomAttributes']}")
        typer.echo(data, nl=False)
        if sys.stdout.isatty() and not data.endswith(b"\n"):
            typer.echo("")


def _invoke_stream(api: Api, kwargs: dict[str, Any], verbose: bool) -> None:
    """Each PayloadPart written to stdout as it arrives (flushed); a ModelStreamError fails the command."""
    answer = api.runtime.invoke_endpoint_with_response_stream(**kwargs)
    if verbose:
        err(f"variant: {answer.get('InvokedProductionVariant', '-')}, content type: {answer.get('ContentType', '-')}")
    out = sys.stdout.buffer
    last = b""
    for event in answer["Body"]:
        part = event.get("PayloadPart", {}).get("Bytes", b"")
        if part:
            out.write(part)
            out.flush()
            last = part
    if sys.stdout.isatty() and not last.endswith(b"\n"):
        out.write(b"\n")
        out.flush()


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
    with handled(url):
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
    with console(stderr=True).status(f"deleting endpoint [bold]{name}[/bold]"):
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
    with handled(url):
        client.delete_resources(api.sm, name, url=url, keep_config=keep_config, keep_model=keep_model,
                                wait=not no_wait, timeout=timeout, say=typer.echo, warn=err, gone=_wait_gone)


def register(app: typer.Typer) -> None:
    """Add the endpoint commands to ``app``."""
    app.command()(deploy)
    app.command()(endpoints)
    app.command()(describe)
    app.command()(invoke)
    app.command("invoke-async")(invoke_async)
    app.command()(delete)
