"""Where the jobs read their inputs and write their outputs: mainsail's own S3 store, real S3 through
boto3 (when ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` is set, as :mod:`mainsail.backends.model_fetch`
does), or local ``file://`` files and folders.

:class:`Storage` lists and opens the inputs (:class:`InputObject`) and writes each output through a
:class:`Sink` that makes it visible only on :meth:`Sink.commit` (a temp file renamed or committed to
the own store, an S3 multipart upload completed), so an output that exists is complete. Both the
batch transform jobs and the asynchronous inferences use it.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from mainsail.aws.s3.files import ObjectMeta, S3Error
from mainsail.aws.s3.store import S3Store
from mainsail.backends.model_fetch import NO_S3_ENDPOINT, s3_client
from mainsail.faults import disk_write
from mainsail.settings import S3Access

logger = logging.getLogger(__name__)

MB = 1024 * 1024
PART_SIZE = 8 * MB


class JobFailure(Exception):
    """The job fails; the text is its FailureReason (an input or output that cannot be used, or the
    transform job's own reasons)."""


def s3_parts(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://bucket/key`` URI."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def local_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI or an absolute path; ``None`` for any other URI."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if uri.startswith("/"):
        return Path(uri)
    return None


class CountingReader(io.RawIOBase):
    """A readable that counts the bytes read from ``inner`` (compressed bytes, for progress)."""

    def __init__(self, inner: Any, on_read: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if n:
            self.on_read(n)
        return n

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            super().close()


@dataclass(frozen=True)
class InputObject:
    """One input: its URI, the name its output gets, its size (0 when unknown) and where it is read
    (``bucket`` and ``key`` in S3, or a local ``path``)."""

    uri: str
    relative: str  # the output is <S3OutputPath>/<relative>.out
    size: int
    bucket: str = ""
    key: str = ""
    path: str = ""


class Storage:
    """Reads inputs and writes outputs: mainsail's own S3 store (``s3`` names no endpoint, as
    :func:`mainsail.backends.model_fetch.own_store`), real S3 through boto3, or local files."""

    def __init__(self, home: Path, s3: S3Access = NO_S3_ENDPOINT) -> None:
        self.home = home
        self.s3_access = s3
        self._own: Any = None
        self._s3: Any = None

    def _use_own(self) -> bool:
        return self.s3_access.endpoint_url is None and (self.home / "s3" / "buckets").is_dir()

    @property
    def own(self) -> Any:
        if self._own is None:
            self._own = S3Store(self.home / "s3", clean=False)
        return self._own

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = s3_client(s3=self.s3_access)
        return self._s3

    def _s3_list(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        if self._use_own():
            try:
                return [(m.key, m.size) for m in self.own.list_objects(bucket, prefix)]
            except S3Error as exc:
                raise JobFailure(f"Could not list s3://{bucket}/{prefix}: {exc}") from None
        out: list[tuple[str, int]] = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        except Exception as exc:
            raise JobFailure(f"Could not list s3://{bucket}/{prefix}: {exc}") from None
        return out

    def _s3_read(self, bucket: str, key: str) -> Any:
        if self._use_own():
            try:
                return self.own.open(bucket, key)[1]
            except S3Error as exc:
                raise JobFailure(f"Could not read s3://{bucket}/{key}: {exc}") from None
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:
            raise JobFailure(f"Could not read s3://{bucket}/{key}: {exc}") from None

    def inputs(self, source: dict[str, Any]) -> list[InputObject]:
        """The objects a TransformS3DataSource names, in key order."""
        uri = str(source["S3Uri"])
        if source.get("S3DataType") == "ManifestFile":
            return self._manifest(uri)
        local = local_path(uri)
        if local is not None:
            if local.is_file():
                return [InputObject(uri, local.name, local.stat().st_size, path=str(local))]
            if not local.is_dir():
                raise JobFailure(f"No input found at {uri}.")
            files = sorted(p for p in local.rglob("*") if p.is_file())
            return [InputObject(p.as_uri(), p.relative_to(local).as_posix(), p.stat().st_size,
                                path=str(p)) for p in files]
        bucket, prefix = s3_parts(uri)
        base = prefix[:prefix.rfind("/") + 1]
        found = []
        for key, size in self._s3_list(bucket, prefix):
            if key.endswith("/"):
                continue
            if key == prefix:
                relative = PurePosixPath(key).name
            elif prefix.endswith("/") or key[len(prefix):].startswith("/"):
                relative = key[len(prefix):].lstrip("/")  # under the prefix as a folder
            else:
                relative = key[len(base):]  # a partial name (s3://b/data/tr -> train.csv)
            found.append(InputObject(f"s3://{bucket}/{key}", relative, size, bucket=bucket, key=key))
        if not found:
            raise JobFailure(f"No S3 objects found under S3 URL \"{uri}\" given in input data source.")
        return found

    def _manifest(self, uri: str) -> list[InputObject]:
        with self.open_raw(InputObject(uri, "", 0, *(s3_parts(uri) if local_path(uri) is None else ("", "")),
                                       path=str(local_path(uri) or ""))) as fh:
            try:
                entries = json.loads(fh.read(16 * MB))
            except ValueError:
                raise JobFailure(f"The manifest file {uri} is not a JSON array.") from None
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict) \
                or "prefix" not in entries[0]:
            raise JobFailure(f'The manifest file {uri} must be [{{"prefix": "s3://..."}}, "key", ...].')
        prefix = str(entries[0]["prefix"])
        objects = []
        for rel in entries[1:]:
            full = prefix + str(rel)
            local = local_path(full)
            if local is not None:
                size = local.stat().st_size if local.is_file() else 0
                objects.append(InputObject(full, str(rel), size, path=str(local)))
            else:
                bucket, key = s3_parts(full)
                objects.append(InputObject(full, str(rel), 0, bucket=bucket, key=key))
        return objects

    def open_raw(self, obj: InputObject) -> Any:
        if obj.path:
            try:
                return open(obj.path, "rb")  # noqa: SIM115 - closed by the caller
            except OSError as exc:
                raise JobFailure(f"Could not read {obj.uri}: {exc}") from None
        return self._s3_read(obj.bucket, obj.key)

    def check_output(self, uri: str) -> None:
        """Fail early when the output bucket (or folder's parent) does not exist."""
        local = local_path(uri)
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
            return
        bucket, _ = s3_parts(uri)
        if self._use_own():
            try:
                self.own.bucket(bucket)
            except S3Error:
                raise JobFailure(f"The output bucket {bucket} does not exist.") from None
        else:
            try:
                self.s3.head_bucket(Bucket=bucket)
            except Exception as exc:
                raise JobFailure(f"The output bucket {bucket} is not usable: {exc}") from None

    def output_done(self, uri: str, since: float) -> bool:
        """Whether the output ``uri`` exists and was written at ``since`` or later (outputs are
        written atomically, so one that exists is complete; the time tells this job's outputs from
        an earlier job's under the same path). ``since`` should allow for S3's whole seconds."""
        local = local_path(uri)
        if local is not None:
            try:
                return local.is_file() and local.stat().st_mtime >= since
            except OSError:
                return False
        bucket, key = s3_parts(uri)
        if self._use_own():
            try:
                return float(self.own.head(bucket, key).last_modified) >= since
            except S3Error:
                return False
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except Exception:
            return False
        return float(head["LastModified"].timestamp()) >= since

    def writer(self, uri: str, content_type: str | None) -> Sink:
        local = local_path(uri)
        if local is not None:
            return _FileSink(local)
        bucket, key = s3_parts(uri)
        if self._use_own():
            return _OwnSink(self.own, bucket, key, content_type)
        return _MultipartSink(self.s3, bucket, key, content_type)


class Sink:
    """An output being written: nothing is visible at its location before :meth:`commit`."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _FileSink(Sink):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(path.name + ".mainsail-tmp")
        self.fh: IO[bytes] = self.tmp.open("wb")

    def write(self, data: bytes) -> None:
        disk_write(len(data))
        self.fh.write(data)

    def commit(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


class _OwnSink(Sink):
    """A streamed put into the own S3 store: a temp file, committed as one object at the end."""

    def __init__(self, store: Any, bucket: str, key: str, content_type: str | None) -> None:
        self.store, self.bucket, self.key = store, bucket, key
        self.content_type = content_type or "binary/octet-stream"
        self.temp = store.new_temp()

    def write(self, data: bytes) -> None:
        self.temp.write(data)

    def commit(self) -> None:
        try:
            self.store.commit(self.bucket, self.temp, ObjectMeta(key=self.key, content_type=self.content_type))
        except S3Error as exc:
            raise JobFailure(f"Could not write s3://{self.bucket}/{self.key}: {exc}") from None

    def abort(self) -> None:
        self.temp.abort()


class _MultipartSink(Sink):
    """An S3 multipart upload of PART_SIZE parts (one PutObject when the output is small)."""

    def __init__(self, s3: Any, bucket: str, key: str, content_type: str | None) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.content_type = content_type or "binary/octet-stream"
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def _flush(self) -> None:
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type)["UploadId"]
        number = len(self.parts) + 1
        etag = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                   PartNumber=number, Body=bytes(self.buffer))["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})
        self.buffer.clear()

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= PART_SIZE:
            self._flush()

    def commit(self) -> None:
        try:
            if self.upload_id is None:
                self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer),
                                   ContentType=self.content_type)
                return
            if self.buffer:
                self._flush()
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                              MultipartUpload={"Parts": self.parts})
        except Exception as exc:
            raise JobFailure(f"Could not write s3://{self.bucket}/{self.key}: {exc}") from None

    def abort(self) -> None:
        if self.upload_id is not None:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except Exception:
                logger.warning("could not abort the upload of s3://%s/%s", self.bucket, self.key)
