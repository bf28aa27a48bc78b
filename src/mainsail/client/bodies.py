"""Request bodies and responses: what :meth:`Endpoint.invoke` / :meth:`LocalModel.invoke` send and return.

:func:`encode_body` turns bytes, text, JSON-able values, numpy arrays and pandas DataFrames into
request bytes and their Content-Type (numpy and pandas are never imported here: only a body of theirs
is recognised); :class:`Response` is one answer.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
NPY_TYPE = "application/x-npy"


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
