"""What ``mainsail metrics`` shows: each column of its table (a line of its chart) as one statistic of one
CloudWatch metric, and the shape of what ``GetMetricData`` answered for them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

SAGEMAKER = "AWS/SageMaker"
INSTANCES = "/aws/sagemaker/Endpoints"


@dataclass(frozen=True)
class Column:
    """One statistic of one metric: a column of the table, a line of the chart."""

    key: str
    header: str
    namespace: str
    metric: str
    stat: str
    factor: float = 1.0
    """what the value is multiplied by for display (ModelLatency: microseconds to milliseconds)"""

    @property
    def counts(self) -> bool:
        return self.stat == "Sum"


COLUMNS = (
    Column("inv", "INVOCATIONS", SAGEMAKER, "Invocations", "Sum"),
    Column("e4xx", "4XX", SAGEMAKER, "Invocation4XXErrors", "Sum"),
    Column("e5xx", "5XX", SAGEMAKER, "Invocation5XXErrors", "Sum"),
    Column("p50", "LATENCY p50 (ms)", SAGEMAKER, "ModelLatency", "p50", 1e-3),
    Column("p99", "p99 (ms)", SAGEMAKER, "ModelLatency", "p99", 1e-3),
    Column("avg", "avg (ms)", SAGEMAKER, "ModelLatency", "Average", 1e-3),
    Column("cpu", "CPU %", INSTANCES, "CPUUtilization", "Average"),
    Column("mem", "MEMORY %", INSTANCES, "MemoryUtilization", "Average"),
)

Series = dict[str, list[tuple[dt.datetime, float]]]
"""Query id (column key + variant index) -> its (timestamp, value) points, oldest first."""


def query_id(column: Column, index: int) -> str:
    return f"{column.key}_{index}"
