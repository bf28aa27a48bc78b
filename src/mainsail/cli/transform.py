"""Batch transform commands: ``transform`` (CreateTransformJob, optionally followed) and ``transform-jobs``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from mainsail.cli.remote import Api, Fail, UrlOption, console, err, handled, when
from mainsail.client.aws import DEFAULT_URL
from mainsail.client.errors import WaitTimeout

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
    with Progress(*columns, console=console(stderr=True), transient=False) as bar:
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
    with handled(url):
        arn = api.sm.create_transform_job(**request)["TransformJobArn"]
        err(f"created transform job {job} ({arn})")
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
    with handled(url):
        kwargs: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Descending"}
        if status:
            kwargs["StatusEquals"] = status
        summaries: list[dict[str, Any]] = []
        for page in api.sm.get_paginator("list_transform_jobs").paginate(**kwargs):
            summaries.extend(page.get("TransformJobSummaries", []))
        out = console()
        if not summaries:
            out.print(f"no transform jobs at {url}: start one with `mainsail transform MODEL --input ... "
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
                          when(summary.get("CreationTime")), when(summary.get("TransformEndTime")),
                          esc(str(summary.get("FailureReason", ""))))
        out.print(table)


def register(app: typer.Typer) -> None:
    """Add the batch transform commands to ``app``."""
    app.command()(transform)
    app.command("transform-jobs")(transform_jobs)
