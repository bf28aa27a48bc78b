"""``mainsail metrics ENDPOINT``: the last minutes of an endpoint's CloudWatch metrics, per variant, as a table
(and with ``--plot`` as a PNG chart, drawn by :mod:`mainsail.cli.metrics_plot`).

Everything is read through the CloudWatch API of ``mainsail up`` with boto3's ``cloudwatch`` client: the
variants from ``ListMetrics`` (and ``DescribeEndpoint``), the numbers from one ``GetMetricData`` call. The
table asks for one period covering the whole window; the chart for one-minute periods (longer ones past four
hours, so that a chart holds at most 240 points).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from mainsail.cli.metric_columns import COLUMNS, INSTANCES, SAGEMAKER, Column, Series, query_id
from mainsail.cli.metrics_plot import write_chart
from mainsail.cli.remote import Api, Fail, UrlOption, console, handled
from mainsail.client import aws as client
from mainsail.client.aws import DEFAULT_URL

#: the most points one chart line holds (longer windows get longer periods)
PLOT_POINTS = 240


def metric_queries(endpoint: str, variants: Sequence[str], period: int) -> list[dict[str, Any]]:
    """GetMetricData's MetricDataQueries: every column for every variant, over periods of ``period`` s."""
    queries = []
    for index, variant in enumerate(variants):
        dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
        for column in COLUMNS:
            queries.append({"Id": query_id(column, index), "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": column.namespace, "MetricName": column.metric, "Dimensions": dimensions},
                "Period": period, "Stat": column.stat}})
    return queries


def fetch(cloudwatch: Any, queries: list[dict[str, Any]], start: dt.datetime, end: dt.datetime) -> Series:
    """Every query's points over [start, end), following NextToken."""
    out: Series = {str(q["Id"]): [] for q in queries}
    kwargs: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end,
                              "ScanBy": "TimestampAscending"}
    while True:
        answer = cloudwatch.get_metric_data(**kwargs)
        for result in answer.get("MetricDataResults", []):
            out.setdefault(str(result["Id"]), []).extend(zip(result.get("Timestamps", []),
                                                             result.get("Values", []), strict=False))
        token = answer.get("NextToken")
        if not token:
            return out
        kwargs["NextToken"] = token


def variants_of(api: Api, endpoint: str) -> list[str]:
    """The endpoint's variants: those it has now (DescribeEndpoint), then any others that recorded metrics
    (a variant removed by an update, or an endpoint deleted since)."""
    described = client.describe_or_none(api.sm.describe_endpoint, EndpointName=endpoint)
    current = [str(pv["VariantName"]) for pv in (described or {}).get("ProductionVariants", [])]
    recorded: set[str] = set()
    for namespace in (SAGEMAKER, INSTANCES):
        pages = api.cloudwatch.get_paginator("list_metrics").paginate(
            Namespace=namespace, Dimensions=[{"Name": "EndpointName", "Value": endpoint}])
        for page in pages:
            for metric in page.get("Metrics", []):
                for dimension in metric.get("Dimensions", []):
                    if dimension.get("Name") == "VariantName":
                        recorded.add(str(dimension["Value"]))
    if described is None and not recorded:
        raise Fail(f"endpoint {endpoint} not found at {api.url}, and no metrics were recorded for it")
    return current + sorted(recorded - set(current))


def summary(column: Column, points: list[tuple[dt.datetime, float]]) -> float | None:
    """One number for the window: counts added up, any other statistic averaged over the periods returned
    (the table asks for one period covering the window, so there is at most one)."""
    if not points:
        return None
    values = [v for _, v in points]
    total = sum(values) if column.counts else sum(values) / len(values)
    return total * column.factor


def cell(column: Column, value: float | None) -> str:
    if value is None:
        return "0" if column.counts else "-"
    if column.counts:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"


def window(minutes: float, time_scale: float, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the last ``minutes`` metric minutes, in real time (a metric minute lasts
    ``60 / time_scale`` real seconds)."""
    end = now or dt.datetime.now(dt.UTC)
    return end - dt.timedelta(seconds=minutes * 60 / time_scale), end


def metrics(
    endpoint: Annotated[str, typer.Argument(help="Endpoint name", show_default=False)],
    minutes: Annotated[int, typer.Option("--minutes", "-m", min=1, max=60 * 24 * 15,
                                         help="How many minutes back to look")] = 15,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Also draw the minutes as a PNG chart into FILE (needs matplotlib: the plot extra)",
        metavar="FILE.png", show_default=False)] = None,
    time_scale: Annotated[float, typer.Option(
        "--time-scale", min=0.001, envvar="MAINSAIL_METRICS_TIME_SCALE",
        help="The control plane's MAINSAIL_METRICS_TIME_SCALE (60: a metric minute lasts a real second)")] = 1.0,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show an endpoint's CloudWatch metrics over the last minutes, per variant: invocations, errors,
    model latency (p50, p99, average), CPU and memory."""
    api = Api(url)
    with handled(url):
        if plot is not None and plot.suffix.lower() != ".png":
            raise Fail(f"--plot {plot}: the chart is a PNG, name it FILE.png", 2)
        variants = variants_of(api, endpoint)
        start, end = window(minutes, time_scale)
        # one period longer than the window: the server rounds StartTime down to the minute
        found = fetch(api.cloudwatch, metric_queries(endpoint, variants, minutes * 60 + 60), start, end)
        print_table(endpoint, variants, found, minutes, url)
        if plot is not None:

            period = 60 * max(1, math.ceil(minutes / PLOT_POINTS))
            series = fetch(api.cloudwatch, metric_queries(endpoint, variants, period), start, end)
            write_chart(plot, endpoint, variants, series, minutes)
            console().print(f"chart written to {plot}", markup=False)


def print_table(endpoint: str, variants: Sequence[str], found: Series, minutes: int, url: str) -> None:
    from rich.markup import escape as esc
    from rich.table import Table

    out = console()
    table = Table(title=f"{endpoint}: the last {minutes} min at {url}", title_justify="left")
    table.add_column("VARIANT", overflow="fold")
    for column in COLUMNS:
        table.add_column(column.header, justify="right")
    for index, variant in enumerate(variants):
        table.add_row(esc(variant), *(cell(c, summary(c, found.get(query_id(c, index), []))) for c in COLUMNS))
    if not variants:
        out.print(f"endpoint {endpoint} has no variants", markup=False)
        return
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``metrics`` to ``app``."""
    app.command()(metrics)
