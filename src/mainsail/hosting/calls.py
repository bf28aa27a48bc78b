"""One SageMaker API call (the store, the caller's region, the JSON input) and the lookups every
operation shares: a record or its ``Could not find`` error, and the List* summaries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mainsail.aws.identity import sagemaker_arn
from mainsail.aws.protocol import Violations, paginate, require
from mainsail.hosting import resources as res
from mainsail.hosting.store import Record, StateStore


@dataclass(frozen=True)
class Call:
    """One API call: the store, the region from the SigV4 credential scope, and the JSON input."""

    store: StateStore
    region: str
    body: dict[str, Any]

    def require(self, member: str) -> str:
        """The string member ``member`` of the input (ValidationException when missing)."""
        return require(self.body, member)

    def paginate(self, items: list[dict[str, Any]], key: str, *, default_max: int, min_max: int = 1,
                 max_max: int = 100) -> dict[str, Any]:
        """One page of ``items`` from the call's ``MaxResults`` and ``NextToken``."""
        return paginate(self.body, items, key, default_max=default_max, min_max=min_max, max_max=max_max)


Operation = Callable[[Call], dict[str, Any]]


def public(record: Record) -> dict[str, Any]:
    """A stored record without its tags (the Describe* shape)."""
    return {k: v for k, v in record.items() if k != "Tags"}


def get_record(call: Call, kind: str, name: str) -> Record:
    """The ``kind`` record named ``name``; SageMaker's ``Could not find ...`` ValidationException otherwise."""
    record = call.store.get(kind, name)
    if record is None:
        raise res.not_found(kind, sagemaker_arn(call.region, kind, name))
    return record


def list_summaries(call: Call, kind: str, name_key: str, arn_key: str, out_key: str) -> dict[str, Any]:
    """A List* answer: records filtered by NameContains / CreationTime, sorted, then paged."""
    body = call.body
    v = Violations()
    sort_by = body.get("SortBy", "CreationTime")
    sort_order = body.get("SortOrder", "Descending")
    if sort_by not in ("Name", "CreationTime"):
        v.add(sort_by, "sortBy", "Member must satisfy enum value set: [Name, CreationTime]")
    if sort_order not in ("Ascending", "Descending"):
        v.add(sort_order, "sortOrder", "Member must satisfy enum value set: [Ascending, Descending]")
    v.raise_if_any()
    records = call.store.list(kind)
    contains = body.get("NameContains")
    if contains:
        records = [r for r in records if str(contains).lower() in r[name_key].lower()]
    before, after = body.get("CreationTimeBefore"), body.get("CreationTimeAfter")
    if before is not None:
        records = [r for r in records if r["CreationTime"] < float(before)]
    if after is not None:
        records = [r for r in records if r["CreationTime"] > float(after)]
    field = name_key if sort_by == "Name" else "CreationTime"
    records.sort(key=lambda r: (r[field], r[name_key]), reverse=sort_order == "Descending")
    summaries = [{name_key: r[name_key], arn_key: r[arn_key], "CreationTime": r["CreationTime"]}
                 for r in records]
    return call.paginate(summaries, out_key, default_max=10)
