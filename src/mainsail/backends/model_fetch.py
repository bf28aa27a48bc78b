"""Model data for local instances: local paths, ``file://`` URLs and ``s3://`` objects or prefixes.

``resolve_model_data`` turns a container's model data into a local directory, as SageMaker does
when it fills ``/opt/ml/model``: a directory is used as is; a ``model.tar.gz`` is extracted (safely,
with :func:`mainsail.serve.model_dir.safe_extract`) into ``<cache_root>/models/<content hash>/``;
an ``s3://`` object is downloaded first (skipped when its ETag and size were seen before); an
``s3://`` prefix (``ModelDataSource`` with ``S3DataType: S3Prefix, CompressionType: None``) is copied
object by object. Cache directories are built in a temporary directory and renamed into place, so a
half-written one is never used and concurrent callers are safe. ``resolve_environment`` does the same
for ``SAGEMAKER_SUBMIT_DIRECTORY`` (a ``sourcedir.tar.gz``). Every failure is a ``ModelSourceError``
whose one-line message names the URL.

``s3://`` is read with boto3 at ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when either is set;
with neither set and mainsail's own S3 store present under the cache root (``$MAINSAIL_HOME/s3``,
made by ``mainsail up``), it is read from that store on disk instead (:class:`OwnStoreClient`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from mainsail.backends.local import ModelSourceError

DEFAULT_MAX_BYTES = 20 * 1024**3
"""Largest model data (download, and extracted size) accepted; ``MAINSAIL_MODEL_DATA_MAX_BYTES``."""
MAX_BYTES_ENV = "MAINSAIL_MODEL_DATA_MAX_BYTES"
SUBMIT_DIRECTORY = "SAGEMAKER_SUBMIT_DIRECTORY"
UNCOMPRESSED_OBJECT = "#uncompressed"
"""Suffix marking an ``s3://`` URL of one uncompressed object (``S3Object`` + ``CompressionType None``)."""
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
COMPLETE = ".mainsail-complete"  # the marker mainsail.serve.model_dir uses too
INDEX_NAME = "s3-index.json"
MULTI_MODEL = "#multimodel"
"""Suffix marking the model-data prefix of a ``Mode: MultiModel`` container (multi-model endpoint)."""
UNCOMPRESSED_TARGETS = "#uncompressed"
"""Suffix of a multi-model prefix whose target models are uncompressed folders (``ModelDataSource``
``S3Prefix`` with ``CompressionType None``), not ``model.tar.gz`` objects."""

_index_lock = threading.Lock()


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


def _one_line(text: str) -> str:
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


def max_bytes_default() -> int:
    raw = os.environ.get(MAX_BYTES_ENV)
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise ModelSourceError(f"{MAX_BYTES_ENV}={raw!r} is not a number of bytes.") from None
    return DEFAULT_MAX_BYTES


# -- the cache -----------------------------------------------------------------------------------


def _complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _staging(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))


def _publish(staging: Path, target: Path, url: str) -> Path:
    """Move the finished ``staging`` directory to ``target``; whoever is first wins."""
    (staging / COMPLETE).touch()
    try:
        os.rename(staging, target)
    except OSError:
        if _complete(target):
            return target  # another caller finished the same content first
        shutil.rmtree(target, ignore_errors=True)  # a stray, unfinished directory
        try:
            os.rename(staging, target)
        except OSError as exc:
            if not _complete(target):
                raise ModelSourceError(f"Could not store model data {url} in {target}: {exc}") from None
    return target


def _check_members(archive: Path, url: str) -> None:
    """Refuse absolute member names and ``..`` (the tarfile ``data`` filter would strip the former)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
                    raise ModelSourceError(f"Model archive {url} is unsafe: member {name!r} leaves the target.")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ModelSourceError(f"Model archive {url} cannot be read: {_one_line(str(exc))}") from None


def extract_archive(archive: Path, cache_dir: Path, url: str, *, max_bytes: int | None = None) -> Path:
    """Extract ``archive`` once per content into ``cache_dir/<sha256[:24]>`` and return that directory."""
    from mainsail.errors import InvalidModelArchive
    from mainsail.serve.model_dir import safe_extract

    limit = max_bytes_default() if max_bytes is None else max_bytes
    try:
        target = cache_dir / _sha256_file(archive)[:24]
    except OSError as exc:
        raise ModelSourceError(f"Model archive {url} cannot be read: {_one_line(str(exc))}") from None
    if _complete(target):
        return target
    _check_members(archive, url)
    staging = _staging(cache_dir)
    try:
        try:
            safe_extract(archive, staging, max_bytes=limit)
        except InvalidModelArchive as exc:
            raise ModelSourceError(f"Model archive {url}: {_one_line(exc.message)}") from None
        return _publish(staging, target, url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _Index:
    """``<cache_root>/s3-index.json``: S3 object (ETag, size) -> the cache directory built from it."""

    def __init__(self, cache_root: Path) -> None:
        self.path = cache_root / INDEX_NAME

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, etag: str, size: int) -> Path | None:
        entry = self._read().get(key)
        if not isinstance(entry, dict) or entry.get("etag") != etag or entry.get("size") != size:
            return None
        path = Path(str(entry.get("path")))
        return path if _complete(path) else None

    def put(self, key: str, etag: str, size: int, path: Path) -> None:
        with _index_lock:
            data = self._read()
            data[key] = {"etag": etag, "size": size, "path": str(path)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".s3-index-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(data, fh, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except OSError:
                Path(tmp).unlink(missing_ok=True)


# -- S3 ------------------------------------------------------------------------------------------


def _endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class OwnStoreClient:
    """The few S3 calls model data needs, answered from mainsail's own S3 store on disk (no HTTP).

    Used when no S3 endpoint is configured (neither ``AWS_ENDPOINT_URL_S3`` nor ``AWS_ENDPOINT_URL``)
    and ``<MAINSAIL_HOME>/s3`` holds a store (``mainsail up`` makes one), so that an object uploaded
    to ``mainsail up``'s S3 works as ``ModelDataUrl`` with no configuration. Failures are
    ``ModelSourceError`` with the same wording as the boto3 path.
    """

    def __init__(self, root: Path) -> None:
        from mainsail.aws.s3.store import S3Store

        self.store = S3Store(root, clean=False)
        self.meta = type("Meta", (), {"endpoint_url": f"file://{root}"})()

    def _missing(self, url: str, exc: Exception) -> ModelSourceError:
        from mainsail.aws.s3.store import S3Error

        if isinstance(exc, S3Error) and exc.code == "NoSuchBucket":
            return ModelSourceError(f"Could not get model data {url}: bucket {_split_s3(url)[0]} does not exist.")
        return ModelSourceError(f"Could not get model data {url}: no such object.")

    def head(self, url: str, bucket: str, key: str) -> tuple[str, int]:
        from mainsail.aws.s3.store import S3Error

        try:
            meta = self.store.head(bucket, key)
        except S3Error as exc:
            raise self._missing(url, exc) from None
        return meta.etag, meta.size

    def download(self, url: str, bucket: str, key: str, dest: Path) -> None:
        from mainsail.aws.s3.store import S3Error

        try:
            _, fh = self.store.open(bucket, key)
        except S3Error as exc:
            raise self._missing(url, exc) from None
        with fh, dest.open("wb") as out:
            shutil.copyfileobj(fh, out, 1 << 20)

    def list(self, url: str, bucket: str, prefix: str) -> list[tuple[str, str, int]]:
        from mainsail.aws.s3.store import S3Error

        try:
            return [(m.key, m.etag, m.size) for m in self.store.list_objects(bucket, prefix)]
        except S3Error as exc:
            raise self._missing(url, exc) from None


def own_store(cache_root: Path) -> OwnStoreClient | None:
    """mainsail's own S3 store under ``cache_root`` when no S3 endpoint is configured and it exists."""
    root = cache_root / "s3"
    if _endpoint_from_env() is None and (root / "buckets").is_dir():
        return OwnStoreClient(root)
    return None


def s3_client(url: str = "s3://") -> Any:
    """A boto3 S3 client. The endpoint comes from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
    (read by botocore itself); dummy credentials are used only with such an endpoint and none set."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ModelSourceError(
            f"Model data {url} is on S3, which needs boto3: pip install 'mainsail[s3]'.") from None
    session = boto3.session.Session()
    region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or session.region_name or "us-east-1")
    kwargs: dict[str, Any] = {}
    if _endpoint_from_env() and session.get_credentials() is None:
        kwargs = {"aws_access_key_id": "mainsail", "aws_secret_access_key": "mainsail"}
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=120)
    return session.client("s3", region_name=region, config=config, **kwargs)


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise ModelSourceError(f"Model data {url}: not an s3://bucket/key URL.")
    return bucket, key


@contextmanager
def _s3_errors(url: str, client: Any) -> Iterator[None]:
    """Turn botocore / s3transfer exceptions into a one-line ``ModelSourceError`` naming ``url``."""
    if isinstance(client, OwnStoreClient):  # raises ModelSourceError itself, and needs no boto3
        yield
        return
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", "S3")
    try:
        yield
    except ModelSourceError:
        raise
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            why = f"bucket {_split_s3(url)[0]} does not exist"
        elif code in ("NoSuchKey", "404", "NotFound") or status == 404:
            why = "no such object"
        elif code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                      "AllAccessDisabled") or status == 403:
            why = f"access denied ({code})"
        else:
            why = f"{code or status}: {error.get('Message', '')}".strip()
        raise ModelSourceError(f"Could not get model data {url}: {_one_line(why)}.") from None
    except NoCredentialsError:
        raise ModelSourceError(
            f"Could not get model data {url}: no AWS credentials are configured "
            "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE).") from None
    except (EndpointConnectionError, ConnectTimeoutError):
        raise ModelSourceError(f"Could not get model data {url}: cannot reach the S3 endpoint {endpoint}.") from None
    except (BotoCoreError, Boto3Error) as exc:
        raise ModelSourceError(f"Could not get model data {url}: {_one_line(str(exc))}") from None


def _head(client: Any, url: str, bucket: str, key: str) -> tuple[str, int]:
    """ETag and size of an object; a missing bucket is told apart from a missing key."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError as bucket_exc:
                if bucket_exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise ModelSourceError(
                        f"Could not get model data {url}: bucket {bucket} does not exist.") from None
            raise ModelSourceError(f"Could not get model data {url}: no such object.") from None
        raise
    return str(head.get("ETag", "")), int(head.get("ContentLength", 0))


def _download(client: Any, url: str, bucket: str, key: str, dest: Path, size: int, limit: int) -> None:
    if size > limit:
        raise ModelSourceError(
            f"Model data {url} is {size} bytes, more than the limit of {limit} ({MAX_BYTES_ENV}).")
    if isinstance(client, OwnStoreClient):
        client.download(url, bucket, key, dest)
    else:
        client.download_file(bucket, key, str(dest))  # streamed to disk by s3transfer
    if dest.stat().st_size > limit:
        raise ModelSourceError(f"Model data {url} grew past the limit of {limit} bytes ({MAX_BYTES_ENV}).")


def _resolve_s3_object(source: ModelSource, cache_root: Path, cache_dir: Path, limit: int) -> Path:
    url = source.uri
    bucket, key = _split_s3(url)
    if not key:
        raise ModelSourceError(f"Model data {url}: the URL names a bucket but no object.")
    own = own_store(cache_root)
    client: Any = own or s3_client(url)
    index = _Index(cache_root)
    index_key = f"{cache_dir.name}:{source.compression}:{url}"
    with _s3_errors(url, client):
        etag, size = own.head(url, bucket, key) if own else _head(client, url, bucket, key)
        cached = index.get(index_key, etag, size)
        if cached is not None:
            return cached
        downloads = cache_root / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=downloads))
        try:
            name = PurePosixPath(key).name or "model"
            local = scratch / name
            _download(own or client, url, bucket, key, local, size, limit)
            if source.compression == "Gzip":
                target = extract_archive(local, cache_dir, url, max_bytes=limit)
            else:  # one uncompressed object: a directory holding that file
                digest = hashlib.sha256(f"object:{name}:".encode())
                with local.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                target = cache_dir / digest.hexdigest()[:24]
                if not _complete(target):
                    staging = _staging(cache_dir)
                    try:
                        os.replace(local, staging / name)
                        _publish(staging, target, url)
                    finally:
                        shutil.rmtree(staging, ignore_errors=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        index.put(index_key, etag, size, target)
        return target


def _relative_key(url: str, prefix: str, key: str) -> PurePosixPath:
    rel = key[len(prefix):]
    parts = rel.split("/")
    if not rel or any(part in ("", ".", "..") for part in parts):
        raise ModelSourceError(f"Model data {url}: object {key!r} cannot be stored safely under the prefix.")
    return PurePosixPath(*parts)


def _resolve_s3_prefix(source: ModelSource, cache_dir: Path, limit: int) -> Path:
    url = source.to_url()
    bucket, prefix = _split_s3(url)
    own = own_store(cache_dir.parent)
    client: Any = own or s3_client(url)
    with _s3_errors(url, client):
        objects: list[tuple[str, str, int]] = []
        if own is not None:
            objects = [obj for obj in own.list(url, bucket, prefix) if not obj[0].endswith("/")]
        else:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):  # folder placeholders
                        objects.append((obj["Key"], str(obj.get("ETag", "")), int(obj.get("Size", 0))))
        if not objects:
            raise ModelSourceError(f"Could not get model data {url}: no objects under the prefix.")
        total = sum(size for _, _, size in objects)
        if total > limit:
            raise ModelSourceError(
                f"Model data {url} is {total} bytes, more than the limit of {limit} ({MAX_BYTES_ENV}).")
        manifest = sorted((str(_relative_key(url, prefix, key)), etag, size) for key, etag, size in objects)
        digest = hashlib.sha256(json.dumps(["S3Prefix", manifest]).encode()).hexdigest()[:24]
        target = cache_dir / digest
        if _complete(target):
            return target
        staging = _staging(cache_dir)
        try:
            for key, _, _ in objects:
                dest = staging.joinpath(*_relative_key(url, prefix, key).parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if own is not None:
                    own.download(url, bucket, key, dest)
                else:
                    client.download_file(bucket, key, str(dest))
            return _publish(staging, target, url)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


# -- the entry points ----------------------------------------------------------------------------


def _local_path(url: str) -> Path | None:
    """The local path a ``file://`` URL or plain path names; ``None`` for other schemes."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ModelSourceError(f"Model data {url}: a file:// URL must name a local path.")
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(url).expanduser()
    return None


def resolve_model_data(url_or_source: str | Mapping[str, Any], cache_root: Path, *,
                       max_bytes: int | None = None) -> Path:
    """A local directory holding the model data (see the module docstring); ``ModelSourceError``
    naming the URL when it cannot be had. Archives land in ``cache_root/models/<hash>/``."""
    source = parse_source(url_or_source)
    limit = max_bytes_default() if max_bytes is None else max_bytes
    cache_dir = cache_root / "models"
    url = source.uri
    if url.startswith("s3://"):
        if source.prefix:
            return _resolve_s3_prefix(source, cache_dir, limit)
        return _resolve_s3_object(source, cache_root, cache_dir, limit)
    path = _local_path(url)
    if path is None:
        raise ModelSourceError(
            f"Model data {url}: the scheme is not supported by the local backend "
            "(use s3://, file:// or a local path).")
    if path.is_dir():
        return path.resolve()
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        return extract_archive(path, cache_dir, url, max_bytes=limit)
    raise ModelSourceError(f"Model data {url}: no such directory or model archive.")


def resolve_environment(env: Mapping[str, str], cache_root: Path, *,
                        max_bytes: int | None = None) -> dict[str, str]:
    """``env`` with an ``s3://``/``file://``/local ``sourcedir.tar.gz`` in ``SAGEMAKER_SUBMIT_DIRECTORY``
    replaced by the local directory it was extracted to (``cache_root/sources/<hash>/``).

    A local directory (or a path that does not exist here, such as ``/opt/ml/model/code``) is left
    for ``mainsail serve``, which falls back to ``<model>/code``.
    """
    out = dict(env)
    value = out.get(SUBMIT_DIRECTORY)
    if not value:
        return out
    limit = max_bytes_default() if max_bytes is None else max_bytes
    cache_dir = cache_root / "sources"
    if value.startswith("s3://"):
        source = parse_source(value)
        if source.prefix:
            out[SUBMIT_DIRECTORY] = str(_resolve_s3_prefix(source, cache_dir, limit))
        else:  # as the framework containers do: the object is a tarball, whatever its name
            out[SUBMIT_DIRECTORY] = str(_resolve_s3_object(
                ModelSource(source.uri), cache_root, cache_dir, limit))
        return out
    path = _local_path(value)
    if path is None:
        raise ModelSourceError(f"{SUBMIT_DIRECTORY} {value}: the scheme is not supported "
                               "(use s3://, file:// or a local path).")
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        out[SUBMIT_DIRECTORY] = str(extract_archive(path, cache_dir, value, max_bytes=limit))
    elif path.is_dir():
        out[SUBMIT_DIRECTORY] = str(path.resolve())
    return out
