"""The Hugging Face inference toolkit's decoder and encoder (``sagemaker-huggingface-inference-toolkit``
``decoder_encoder.py``), what the Hugging Face containers' default ``input_fn`` / ``output_fn`` use.

Decoding: JSON → ``json.loads`` (a dict such as ``{"inputs": ..., "parameters": ...}``); CSV with a
header naming ``inputs``, ``question`` or ``context`` → ``{"inputs": [...]}`` (the ``inputs`` column,
or one dict per row); NPY → an array (never with pickles); images → ``{"inputs": PIL image}`` (with
Pillow installed) and audio → ``{"inputs": bytes}``. Encoding: JSON written compactly with
``ensure_ascii=False``, numpy and torch values through ``tolist()`` / ``int`` / ``float``,
``datetime`` as ``str``, a PIL image as base64 PNG, and NaN refused; CSV through ``csv.DictWriter``;
NPY. The Accept is matched exactly (a missing or ``*/*`` one is JSON).
"""

from __future__ import annotations

import base64
import csv
import datetime
import io
import json
from typing import Any

import numpy as np

from mainsail.codecs import toolkit
from mainsail.codecs.toolkit import CSV, JSON, NPY, media_type_of
from mainsail.errors import BadRequest, ModelError, UnsupportedAccept, UnsupportedContentType

IMAGE_TYPES = ("image/jpeg", "image/png", "image/tiff", "image/bmp", "image/gif", "image/webp", "image/x-image")
AUDIO_TYPES = ("audio/x-flac", "audio/flac", "audio/mpeg", "audio/x-audio", "audio/wave", "audio/wav",
               "audio/x-wav", "audio/ogg")
DECODE_TYPES = (JSON, CSV, NPY, *IMAGE_TYPES, *AUDIO_TYPES)
ENCODE_TYPES = (JSON, CSV, NPY)


def _text(data: str | bytes) -> str:
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8: byte {exc.start} ({bytes(data)[exc.start]:#04x})") from None


def decode_csv(text: str) -> dict[str, Any]:
    lines = text.splitlines()
    if not lines or not any(header in lines[0].lower() for header in ("question", "context", "inputs")):
        raise BadRequest("You need to provide the correct CSV with Header columns to use it with the inference "
                         "toolkit default handler.")
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise BadRequest(f"the CSV body cannot be read: {exc}") from None
    if not rows:
        raise BadRequest("the CSV body has a header and no rows")
    if "inputs" in rows[0]:
        return {"inputs": [row["inputs"] for row in rows]}
    return {"inputs": rows}


def decode(data: str | bytes, content_type: str | None) -> Any:
    """The body as the Hugging Face default ``input_fn`` gives it to ``predict_fn``."""
    media = media_type_of(content_type)
    if media == JSON:
        try:
            return json.loads(_text(data))
        except json.JSONDecodeError as exc:
            raise BadRequest(f"JSON body is not valid at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:  # an integer of too many digits; too deep a nesting
            raise BadRequest(f"JSON body is not valid: {exc}") from None
    if media == CSV:
        return decode_csv(_text(data))
    if media == NPY:
        return toolkit.decode_npy(data if isinstance(data, bytes) else data.encode())
    if media in IMAGE_TYPES:
        try:
            from PIL import Image
        except ImportError:
            raise UnsupportedContentType(content_type, ["(with Pillow installed) image/*"]) from None
        try:
            raw = data.encode() if isinstance(data, str) else bytes(data)
            return {"inputs": Image.open(io.BytesIO(raw)).convert("RGB")}
        except Exception as exc:  # PIL.UnidentifiedImageError and friends
            raise BadRequest(f"the body is not an image Pillow can read: {exc}") from None
    if media in AUDIO_TYPES:
        return {"inputs": bytes(data if isinstance(data, bytes) else data.encode())}
    raise UnsupportedContentType(content_type, list(DECODE_TYPES))


class _Encoder(json.JSONEncoder):
    def default(self, obj: Any) -> Any:
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if hasattr(obj, "tolist"):
            return obj.tolist()
        if isinstance(obj, datetime.datetime):
            return str(obj)
        if type(obj).__module__.startswith("PIL.") and hasattr(obj, "save"):
            with io.BytesIO() as out:
                obj.save(out, format="PNG")
                return base64.b64encode(out.getvalue()).decode("utf-8")
        return super().default(obj)


def encode_json(content: Any) -> bytes:
    try:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, cls=_Encoder,
                          separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"the prediction cannot be written as JSON: {exc}") from None
    return text.encode("utf-8")


def encode_csv(content: Any) -> bytes:
    rows = content if isinstance(content, list) else list(content)
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise ModelError("the prediction cannot be written as CSV: it is not a list of records (dicts)")
    out = io.StringIO()
    writer = csv.DictWriter(out, rows[0].keys())
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def encode(prediction: Any, accept: str | None) -> tuple[bytes, str]:
    """The prediction written for ``accept`` (matched exactly; missing or ``*/*`` is JSON)."""
    media = (accept or "").split(";")[0].strip().lower()
    if media in ("", "*/*", JSON):
        return encode_json(prediction), JSON
    if media == CSV:
        return encode_csv(prediction), CSV
    if media == NPY:
        return toolkit.encode_npy(prediction), NPY
    raise UnsupportedAccept(accept, list(ENCODE_TYPES))
