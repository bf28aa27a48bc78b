"""One SageMaker API call (the store, the caller's region, the JSON input) and the lookups every
operation shares: a record or its ``Could not find`` error, and the List* summaries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mainsail.aws.identity import sagemaker_arn
from mainsail.aws.protocol import paginate, require
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


def _stamp(record: Record, key: str) -> float:
    return float(record.get(key) or record["CreationTime"])


def _after(record: Record, key: str, limit: float) -> bool:
    return _stamp(record, key) > limit


def _before(record: Record, key: str, limit: float) -> bool:
    return _stamp(record, key) < limit


def list_summaries(call: Call, kind: str, name_key: str, arn_key: str, out_key: str, *,
                   status_key: str | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A List* answer: records filtered by NameContains, CreationTime / LastModifiedTime and (with a
    ``status_key``) StatusEquals, sorted by SortBy (Name, CreationTime, Status) and SortOrder, then
    paged; each summary has the name, ARN, CreationTime and the ``extra`` members. The enums and
    ranges were checked against the service model before the operation ran."""
    body = call.body
    sort_by = body.get("SortBy", "CreationTime")
    descending = body.get("SortOrder", "Descending") == "Descending"
    records = call.store.list(kind)
    contains = body.get("NameContains")
    if contains:
        records = [r for r in records if str(contains).lower() in r[name_key].lower()]
    if status_key is not None and body.get("StatusEquals"):
        records = [r for r in records if r.get(status_key) == body["StatusEquals"]]
    for member, key, newer in (("CreationTimeAfter", "CreationTime", True),
                               ("CreationTimeBefore", "CreationTime", False),
                               ("LastModifiedTimeAfter", "LastModifiedTime", True),
                               ("LastModifiedTimeBefore", "LastModifiedTime", False)):
        if body.get(member) is not None:
            limit = float(body[member])
            keep = _after if newer else _before
            records = [r for r in records if keep(r, key, limit)]
    field = {"Name": name_key, "Status": status_key}.get(sort_by) or "CreationTime"
    records.sort(key=lambda r: (r.get(field, ""), r[name_key]), reverse=descending)
    summaries = [{name_key: r[name_key], arn_key: r[arn_key], "CreationTime": r["CreationTime"],
                  **{k: r[k] for k in extra if k in r}} for r in records]
    return call.paginate(summaries, out_key, default_max=10)
