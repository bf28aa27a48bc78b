"""Where model data lives: ``ModelDataUrl`` / ``ModelDataSource`` read into one URL string and back.

A container's model data (``ModelDataUrl``, or ``ModelDataSource.S3DataSource`` with its
``S3DataType`` and ``CompressionType``) becomes one string for ``InstanceSpec.model_data_url``
(:func:`container_model_source`), read back by :func:`parse_source`. An ``S3Prefix`` ends in ``/``; an
uncompressed ``S3Object`` carries ``#uncompressed``; the prefix of a ``Mode: MultiModel`` container
carries ``#multimodel`` (:func:`multi_model_prefix`, :func:`multi_model_target`). Every failure is a
``ModelSourceError`` whose one-line message names the URL; the size limit on model data is here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mainsail.backends.base import ModelSourceError
from mainsail.settings import DEFAULT_MODEL_DATA_MAX_BYTES

DEFAULT_MAX_BYTES = DEFAULT_MODEL_DATA_MAX_BYTES
"""Largest model data (download, and extracted size) accepted; ``MAINSAIL_MODEL_DATA_MAX_BYTES``."""
MAX_BYTES_ENV = "MAINSAIL_MODEL_DATA_MAX_BYTES"
UNCOMPRESSED_OBJECT = "#uncompressed"
"""Suffix marking an ``s3://`` URL of one uncompressed object (``S3Object`` + ``CompressionType None``)."""
MULTI_MODEL = "#multimodel"
"""Suffix marking the model-data prefix of a ``Mode: MultiModel`` container (multi-model endpoint)."""
UNCOMPRESSED_TARGETS = "#uncompressed"
"""Suffix of a multi-model prefix whose target models are uncompressed folders (``ModelDataSource``
``S3Prefix`` with ``CompressionType None``), not ``model.tar.gz`` objects."""


@dataclass(frozen=True)
class ModelSource:
    """Where model data lives, as ``ModelDataSource.S3DataSource`` describes it."""

    uri: str
    s3_data_type: str = "S3Object"
    compression: str = "Gzip"

    @property
    def prefix(self) -> bool:
        return self.s3_data_type == "S3Prefix"

    def to_url(self) -> str:
        """One string for ``InstanceSpec.model_data_url`` that :func:`parse_source` reads back."""
        if self.prefix:
            return self.uri if self.uri.endswith("/") else self.uri + "/"
        if self.compression == "None" and self.uri.startswith("s3://"):
            return self.uri + UNCOMPRESSED_OBJECT
        return self.uri


def one_line(text: str) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(str(text).split())


def source_from_s3_data_source(data: Mapping[str, Any]) -> ModelSource:
    """A ``ModelSource`` from a ``ModelDataSource.S3DataSource`` dict (validated)."""
    uri = data.get("S3Uri")
    if not isinstance(uri, str) or not uri:
        raise ModelSourceError("ModelDataSource.S3DataSource has no S3Uri.")
    data_type = str(data.get("S3DataType") or "S3Object")
    compression = str(data.get("CompressionType") or "None")
    if data_type not in ("S3Object", "S3Prefix"):
        raise ModelSourceError(f"ModelDataSource {uri}: S3DataType {data_type!r} is not S3Object or S3Prefix.")
    if compression not in ("None", "Gzip"):
        raise ModelSourceError(f"ModelDataSource {uri}: CompressionType {compression!r} is not None or Gzip.")
    if data_type == "S3Prefix" and compression != "None":
        raise ModelSourceError(
            f"ModelDataSource {uri}: an S3Prefix must be uncompressed (CompressionType None).")
    return ModelSource(uri, data_type, compression)


def container_model_source(container: Mapping[str, Any]) -> str | None:
    """The model data of a container (``ModelDataUrl`` or ``ModelDataSource``) as one URL string.

    ``None`` when the container names no model data. An ``S3Prefix`` comes back with a trailing
    ``/``; an uncompressed ``S3Object`` with the ``#uncompressed`` suffix; the prefix of a
    ``Mode: MultiModel`` container with the ``#multimodel`` suffix (:func:`multi_model_prefix`).
    """
    url = container.get("ModelDataUrl")
    multi = container.get("Mode") == "MultiModel"
    if isinstance(url, str) and url:
        return url + MULTI_MODEL if multi else url
    source = container.get("ModelDataSource") or {}
    s3 = source.get("S3DataSource") if isinstance(source, Mapping) else None
    if not isinstance(s3, Mapping):
        return None
    return multi_model_source(s3) if multi else source_from_s3_data_source(s3).to_url()


def multi_model_source(data: Mapping[str, Any]) -> str:
    """The marked prefix of a ``Mode: MultiModel`` container's ``ModelDataSource.S3DataSource``: it
    must be an ``S3Prefix``; with ``CompressionType Gzip`` each TargetModel names a ``model.tar.gz``
    under it (as with ``ModelDataUrl``), with ``None`` a folder of uncompressed model files."""
    uri = data.get("S3Uri")
    if not isinstance(uri, str) or not uri:
        raise ModelSourceError("ModelDataSource.S3DataSource has no S3Uri.")
    data_type = str(data.get("S3DataType") or "S3Object")
    compression = str(data.get("CompressionType") or "None")
    if data_type != "S3Prefix":
        raise ModelSourceError(f"ModelDataSource {uri}: a MultiModel container needs S3DataType S3Prefix "
                               f"(the prefix of its target models), not {data_type!r}.")
    if compression not in ("None", "Gzip"):
        raise ModelSourceError(f"ModelDataSource {uri}: CompressionType {compression!r} is not None or Gzip.")
    prefix = uri if uri.endswith("/") else uri + "/"
    return prefix + (UNCOMPRESSED_TARGETS if compression == "None" else "") + MULTI_MODEL


def parse_source(url_or_source: str | Mapping[str, Any]) -> ModelSource:
    """Read a URL string (as :func:`container_model_source` makes them), a container dict, a
    ``ModelDataSource`` dict or an ``S3DataSource`` dict."""
    if isinstance(url_or_source, Mapping):
        if "ModelDataUrl" in url_or_source or "ModelDataSource" in url_or_source:
            url = container_model_source(url_or_source)
            if url is None:
                raise ModelSourceError("The container has no ModelDataUrl or ModelDataSource.")
            return parse_source(url)
        inner = url_or_source.get("S3DataSource", url_or_source)
        return source_from_s3_data_source(inner)
    url = str(url_or_source)
    if url.startswith("s3://") and url.endswith(UNCOMPRESSED_OBJECT):
        return ModelSource(url[: -len(UNCOMPRESSED_OBJECT)], "S3Object", "None")
    if url.startswith("s3://") and url.endswith("/"):
        return ModelSource(url, "S3Prefix", "None")
    return ModelSource(url)


def multi_model_prefix(url: str, environment: Mapping[str, str] | None = None) -> str | None:
    """The model-data prefix of a multi-model container (``Mode: MultiModel``, marked by
    :func:`container_model_source`, or ``SAGEMAKER_MULTI_MODEL=true`` in its environment), ``None``
    for a single-model one. The target models are ``<prefix>/<TargetModel>``; a prefix ending in
    ``#uncompressed`` has folders as target models (:func:`multi_model_target`)."""
    if url.endswith(MULTI_MODEL):
        return url[: -len(MULTI_MODEL)]
    if (environment or {}).get("SAGEMAKER_MULTI_MODEL", "").strip().lower() in ("1", "true", "yes", "on"):
        return url
    return None


def multi_model_target(prefix: str, target: str) -> str:
    """The model data of ``target`` under a multi-model ``prefix``: ``<prefix>/<target>``, or the
    folder ``<prefix>/<target>/`` (an ``S3Prefix``) under an ``#uncompressed`` prefix."""
    if prefix.endswith(UNCOMPRESSED_TARGETS):
        base = prefix[: -len(UNCOMPRESSED_TARGETS)]
        return base.rstrip("/") + "/" + target.strip("/") + "/"
    return prefix.rstrip("/") + "/" + target.lstrip("/")
