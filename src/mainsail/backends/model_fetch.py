"""Model data for local instances: local paths, ``file://`` URLs and ``s3://`` objects or prefixes.

``resolve_model_data`` turns a container's model data into a local directory, as SageMaker does
when it fills ``/opt/ml/model``: a directory is used as is; a ``model.tar.gz`` is extracted (safely,
with :func:`mainsail.archives.safe_extract`) into ``<cache_root>/models/<content hash>/``;
an ``s3://`` object is downloaded first (skipped when its ETag and size were seen before); an
``s3://`` prefix (``ModelDataSource`` with ``S3DataType: S3Prefix, CompressionType: None``) is copied
object by object. Cache directories are built in a temporary directory and renamed into place, so a
half-written one is never used and concurrent callers are safe (:mod:`mainsail.backends.model_cache`).
``resolve_environment`` does the same for ``SAGEMAKER_SUBMIT_DIRECTORY`` (a ``sourcedir.tar.gz``).
Every failure is a ``ModelSourceError`` whose one-line message names the URL.

``s3://`` is read with boto3 at ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when either is set;
with neither set and mainsail's own S3 store present under the cache root (``$MAINSAIL_HOME/s3``,
made by ``mainsail up``), it is read from that store on disk instead (:class:`OwnStoreClient`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from mainsail.aws.s3.files import S3Error
from mainsail.aws.s3.store import S3Store
from mainsail.backends.base import ModelSourceError
from mainsail.backends.model_cache import S3Index, extract_archive, is_complete, new_staging, publish

# Parsing lives in mainsail.backends.model_sources; these names stay importable from here.
from mainsail.backends.model_sources import (
    DEFAULT_MAX_BYTES,
    MAX_BYTES_ENV,
    ModelSource,
    one_line,
    parse_source,
)
from mainsail.settings import S3Access

SUBMIT_DIRECTORY = "SAGEMAKER_SUBMIT_DIRECTORY"
#: S3 as botocore finds it on its own (no endpoint of ours): the default where a caller names none
NO_S3_ENDPOINT = S3Access()
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


# -- S3 ------------------------------------------------------------------------------------------


class OwnStoreClient:
    """The few S3 calls model data needs, answered from mainsail's own S3 store on disk (no HTTP).

    Used when no S3 endpoint is configured (:class:`~mainsail.settings.S3Access`, from
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when ``mainsail up`` starts) and
    ``<MAINSAIL_HOME>/s3`` holds a store (``mainsail up`` makes one), so that an object uploaded to
    ``mainsail up``'s S3 works as ``ModelDataUrl`` with no configuration. Failures are
    ``ModelSourceError`` with the same wording as the boto3 path.
    """

    def __init__(self, root: Path) -> None:
        self.store = S3Store(root, clean=False)
        self.meta = type("Meta", (), {"endpoint_url": f"file://{root}"})()

    def _missing(self, url: str, exc: Exception) -> ModelSourceError:
        if isinstance(exc, S3Error) and exc.code == "NoSuchBucket":
            return ModelSourceError(f"Could not get model data {url}: bucket {_split_s3(url)[0]} does not exist.")
        return ModelSourceError(f"Could not get model data {url}: no such object.")

    def head(self, url: str, bucket: str, key: str) -> tuple[str, int]:
        try:
            meta = self.store.head(bucket, key)
        except S3Error as exc:
            raise self._missing(url, exc) from None
        return meta.etag, meta.size

    def download(self, url: str, bucket: str, key: str, dest: Path) -> None:
        try:
            _, fh = self.store.open(bucket, key)
        except S3Error as exc:
            raise self._missing(url, exc) from None
        with fh, dest.open("wb") as out:
            shutil.copyfileobj(fh, out, 1 << 20)

    def list(self, url: str, bucket: str, prefix: str) -> list[tuple[str, str, int]]:
        try:
            return [(m.key, m.etag, m.size) for m in self.store.list_objects(bucket, prefix)]
        except S3Error as exc:
            raise self._missing(url, exc) from None


def own_store(cache_root: Path, s3: S3Access = NO_S3_ENDPOINT) -> OwnStoreClient | None:
    """mainsail's own S3 store under ``cache_root`` when ``s3`` names no endpoint and the store exists."""
    root = cache_root / "s3"
    if s3.endpoint_url is None and (root / "buckets").is_dir():
        return OwnStoreClient(root)
    return None


def s3_client(url: str = "s3://", s3: S3Access = NO_S3_ENDPOINT) -> Any:
    """A boto3 S3 client for ``s3``'s endpoint and region (with none, botocore's own configuration);
    dummy credentials are used only with an endpoint (an S3 stand-in) and no credentials set."""
    try:  # boto3 is an optional extra (mainsail[s3]): imported only when S3 is used
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ModelSourceError(
            f"Model data {url} is on S3, which needs boto3: pip install 'mainsail[s3]'.") from None
    session = boto3.session.Session()
    region = s3.region or session.region_name or "us-east-1"
    kwargs: dict[str, Any] = {}
    if s3.endpoint_url:
        kwargs["endpoint_url"] = s3.endpoint_url
        if session.get_credentials() is None:
            kwargs.update(aws_access_key_id="mainsail", aws_secret_access_key="mainsail")
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
    # boto3 is an optional extra (mainsail[s3]): imported only when S3 is used
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
        raise ModelSourceError(f"Could not get model data {url}: {one_line(why)}.") from None
    except NoCredentialsError:
        raise ModelSourceError(
            f"Could not get model data {url}: no AWS credentials are configured "
            "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE).") from None
    except (EndpointConnectionError, ConnectTimeoutError):
        raise ModelSourceError(f"Could not get model data {url}: cannot reach the S3 endpoint {endpoint}.") from None
    except (BotoCoreError, Boto3Error) as exc:
        raise ModelSourceError(f"Could not get model data {url}: {one_line(str(exc))}") from None


def _head(client: Any, url: str, bucket: str, key: str) -> tuple[str, int]:
    """ETag and size of an object; a missing bucket is told apart from a missing key."""
    from botocore.exceptions import ClientError  # boto3 is an optional extra: imported only when used

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


def _resolve_s3_object(source: ModelSource, cache_root: Path, cache_dir: Path, limit: int, s3: S3Access) -> Path:
    url = source.uri
    bucket, key = _split_s3(url)
    if not key:
        raise ModelSourceError(f"Model data {url}: the URL names a bucket but no object.")
    own = own_store(cache_root, s3)
    client: Any = own or s3_client(url, s3)
    index = S3Index(cache_root)
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
                if not is_complete(target):
                    staging = new_staging(cache_dir)
                    try:
                        os.replace(local, staging / name)
                        publish(staging, target, url)
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


def _resolve_s3_prefix(source: ModelSource, cache_dir: Path, limit: int, s3: S3Access) -> Path:
    url = source.to_url()
    bucket, prefix = _split_s3(url)
    own = own_store(cache_dir.parent, s3)
    client: Any = own or s3_client(url, s3)
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
        if is_complete(target):
            return target
        staging = new_staging(cache_dir)
        try:
            for key, _, _ in objects:
                dest = staging.joinpath(*_relative_key(url, prefix, key).parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if own is not None:
                    own.download(url, bucket, key, dest)
                else:
                    client.download_file(bucket, key, str(dest))
            return publish(staging, target, url)
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
                       max_bytes: int = DEFAULT_MAX_BYTES, s3: S3Access = NO_S3_ENDPOINT) -> Path:
    """A local directory holding the model data (see the module docstring); ``ModelSourceError``
    naming the URL when it cannot be had. Archives land in ``cache_root/models/<hash>/``; nothing over
    ``max_bytes`` is downloaded or extracted; S3 is reached as ``s3`` says."""
    source = parse_source(url_or_source)
    limit = max_bytes
    cache_dir = cache_root / "models"
    url = source.uri
    if url.startswith("s3://"):
        if source.prefix:
            return _resolve_s3_prefix(source, cache_dir, limit, s3)
        return _resolve_s3_object(source, cache_root, cache_dir, limit, s3)
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
                        max_bytes: int = DEFAULT_MAX_BYTES, s3: S3Access = NO_S3_ENDPOINT) -> dict[str, str]:
    """``env`` with an ``s3://``/``file://``/local ``sourcedir.tar.gz`` in ``SAGEMAKER_SUBMIT_DIRECTORY``
    replaced by the local directory it was extracted to (``cache_root/sources/<hash>/``).

    A local directory (or a path that does not exist here, such as ``/opt/ml/model/code``) is left
    for ``mainsail serve``, which falls back to ``<model>/code``.
    """
    out = dict(env)
    value = out.get(SUBMIT_DIRECTORY)
    if not value:
        return out
    limit = max_bytes
    cache_dir = cache_root / "sources"
    if value.startswith("s3://"):
        source = parse_source(value)
        if source.prefix:
            out[SUBMIT_DIRECTORY] = str(_resolve_s3_prefix(source, cache_dir, limit, s3))
        else:  # as the framework containers do: the object is a tarball, whatever its name
            out[SUBMIT_DIRECTORY] = str(_resolve_s3_object(
                ModelSource(source.uri), cache_root, cache_dir, limit, s3))
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
