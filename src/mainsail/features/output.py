"""Response formatting shared by the built-in handlers: one rule, the reference layouts.

JSON carries every key the reference handler emits, in its order, plus seed 000's ``output-label``
(and ``request_id`` when the request carried one). Values are ``str()`` of the Python float of each
score, so a float32 score prints as the reference prints it (``"0.2850257158279419"``). The label is
``class-<k>`` for the first highest raw score. CSV is the reference's exact layout, no header, four
decimals (``f"{round(p, 4):.4f}"``), one line per record ending in ``"\\n"``.

Layouts: ``"xgboost"`` (the tabular handler) and ``"pytorch"`` (the multimodal handler) differ only
where the two reference handlers differ.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import orjson

from mainsail.errors import UnsupportedAccept

Layout = Literal["xgboost", "pytorch"]
JSON = "application/json"
CSV = "text/csv"
ENCODE_TYPES = (JSON, CSV)


def _labels(raw: np.ndarray) -> list[str]:
    return [f"class-{k}" for k in np.argmax(raw, axis=1).tolist()]


def json_records(raw: np.ndarray, calibrated: np.ndarray, layout: Layout = "xgboost") -> list[dict[str, str]]:
    raw_rows = raw.tolist()
    cal_rows = calibrated.tolist()
    labels = _labels(raw)
    records: list[dict[str, str]] = []
    if raw.shape[1] == 2:
        for r, c, label in zip(raw_rows, cal_rows, labels, strict=True):
            if layout == "xgboost":
                records.append({"legacy-score": str(r[1]), "score-percentile": str(c[1]),
                                "calibrated-score": str(c[1]), "custom-output-label": label,
                                "output-label": label})
            else:
                records.append({"legacy-score": str(r[1]), "calibrated-score": str(c[1]),
                                "score-percentile": str(c[1]), "output-label": label})
        return records
    width = raw.shape[1]
    names = [f"{k + 1:02d}" for k in range(width)]
    for r, c, label in zip(raw_rows, cal_rows, labels, strict=True):
        record: dict[str, str] = {}
        for k, name in enumerate(names):
            record[f"prob_{name}"] = str(r[k])
            record[f"calibrated_prob_{name}"] = str(c[k])
        if layout == "xgboost":
            record["custom-output-label"] = label
        record["output-label"] = label
        records.append(record)
    return records


def format_json(raw: np.ndarray, calibrated: np.ndarray, *, layout: Layout = "xgboost",
                request_id: str | None = None) -> bytes:
    payload: dict[str, object] = {"predictions": json_records(raw, calibrated, layout)}
    if request_id is not None:
        payload["request_id"] = request_id
    return orjson.dumps(payload)


def _four(value: float) -> str:
    return f"{round(value, 4):.4f}"


def format_csv(raw: np.ndarray, calibrated: np.ndarray, *, layout: Layout = "xgboost") -> bytes:
    raw_rows = raw.tolist()
    cal_rows = calibrated.tolist()
    lines: list[str] = []
    if raw.shape[1] == 2:
        for r, c in zip(raw_rows, cal_rows, strict=True):
            cells = [_four(r[1]), _four(c[1]), _four(c[1])]
            if layout == "xgboost":
                cells.append("class-1" if r[1] > r[0] else "class-0")
            lines.append(",".join(cells))
    else:
        for r, c, label in zip(raw_rows, cal_rows, _labels(raw), strict=True):
            if layout == "xgboost":
                cells = [cell for pair in zip(map(_four, r), map(_four, c), strict=True) for cell in pair]
                cells.append(label)
            else:
                cells = [_four(v) for v in r] + [_four(v) for v in c]
            lines.append(",".join(cells))
    return ("\n".join(lines) + "\n").encode("utf-8")


def encode_scores(raw: np.ndarray, calibrated: np.ndarray, accept: str, *, layout: Layout = "xgboost",
                  request_id: str | None = None) -> tuple[bytes, str]:
    """Pick JSON or CSV from Accept (first supported entry; parameters and case ignored)."""
    for candidate in accept.split(","):
        kind = candidate.split(";", 1)[0].strip().lower()
        if kind in (JSON, "application/*", "*/*"):
            return format_json(raw, calibrated, layout=layout, request_id=request_id), JSON
        if kind in (CSV, "text/*"):
            return format_csv(raw, calibrated, layout=layout), CSV
    raise UnsupportedAccept(accept, list(ENCODE_TYPES))
