"""Content codecs: request bodies to DataFrames/arrays and predictions back to bytes.

Importing this package imports neither pandas nor pyarrow (nor numpy): the codecs import them when a
body is decoded or encoded. Build a registry per app with :func:`default_registry`.
"""

from __future__ import annotations

from mainsail.codecs.base import (
    Codec,
    CodecRegistry,
    Encoded,
    MediaType,
    parse_accept,
    parse_media_type,
)
from mainsail.codecs.csv import CsvCodec
from mainsail.codecs.json import JsonCodec
from mainsail.codecs.jsonlines import JsonLinesCodec
from mainsail.codecs.npy import NpyCodec
from mainsail.codecs.parquet import ParquetCodec

__all__ = [
    "Codec",
    "CodecRegistry",
    "CsvCodec",
    "Encoded",
    "JsonCodec",
    "JsonLinesCodec",
    "MediaType",
    "NpyCodec",
    "ParquetCodec",
    "default_registry",
    "parse_accept",
    "parse_media_type",
]


def default_registry() -> CodecRegistry:
    """A fresh registry with the built-in codecs: CSV, JSON, JSON Lines, Parquet and NPY."""
    return CodecRegistry([CsvCodec(), JsonCodec(), JsonLinesCodec(), ParquetCodec(), NpyCodec()])
