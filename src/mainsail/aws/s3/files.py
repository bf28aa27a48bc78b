"""The records and files under mainsail's S3 store: S3Error, Bucket, ObjectMeta, Part, TempFile (a body being
written, digested as it streams in), S3's limits, and the fsync'd JSON sidecar helpers."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mainsail.aws.identity import DEFAULT_REGION
from mainsail.faults import disk_write

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10000
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_RE = re.compile(r"\d+\.\d+\.\d+\.\d+")
CHECKSUMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


class S3Error(Exception):
    """An S3 error answer: ``code`` (``NoSuchKey``...), HTTP status and extra XML fields."""

    def __init__(self, code: str, status: int, message: str, **fields: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.fields = fields


@contextlib.contextmanager
def disk_full_is_an_answer() -> Iterator[None]:
    """A full disk (or quota) while storing becomes S3Error ``InsufficientStorage`` (507: S3 itself
    has no such answer; botocore does not retry it) naming the cause, instead of an internal error."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise S3Error("InsufficientStorage", 507,
                      f"Not enough disk space on the mainsail host to store this: {exc.strerror}.") from None


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error("NoSuchBucket", 404, "The specified bucket does not exist", BucketName=bucket)


def no_such_key(key: str) -> S3Error:
    return S3Error("NoSuchKey", 404, "The specified key does not exist.", Key=key)


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error("NoSuchUpload", 404, "The specified upload does not exist. The upload ID may be invalid, "
                   "or the upload may have been aborted or completed.", UploadId=upload_id)


def valid_bucket_name(name: str) -> bool:
    return bool(_BUCKET_RE.fullmatch(name)) and ".." not in name and not _IP_RE.fullmatch(name)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Bucket:
    name: str
    created: float
    region: str = DEFAULT_REGION


@dataclass
class ObjectMeta:
    """What a sidecar holds about one object."""

    key: str
    size: int = 0
    etag: str = ""  # with its quotes, as S3 sends it
    last_modified: float = 0.0
    content_type: str = "binary/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)  # Content-Encoding, Cache-Control...
    metadata: dict[str, str] = field(default_factory=dict)  # x-amz-meta-* (names lower case)
    checksum: dict[str, str] = field(default_factory=dict)  # {"algorithm": "crc32", "value": b64}
    data: str = ""  # file name under data/

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ObjectMeta:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class Part:
    number: int
    etag: str
    size: int
    last_modified: float
    path: Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data: dict[str, Any], tmp_dir: Path) -> None:
    """Atomically replace ``path`` with ``data`` (temp file in ``tmp_dir``, fsync, rename)."""
    tmp = tmp_dir / f"{uuid.uuid4().hex}.json"
    try:
        with disk_full_is_an_answer(), tmp.open("w", encoding="utf-8") as fh:
            text = json.dumps(data, ensure_ascii=False)
            disk_write(len(text))
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return (self.value & 0xFFFFFFFF).to_bytes(4, "big")


class TempFile:
    """A body being written to ``tmp/``: MD5 (and the requested checksum, when it can be computed
    here) are taken as it streams in. ``abort`` removes it; the store's commit renames it."""

    def __init__(self, tmp_dir: Path, checksum: str | None = None) -> None:
        self.path = tmp_dir / f"{uuid.uuid4().hex}.part"
        self._fh: IO[bytes] | None = self.path.open("xb")
        self.md5 = hashlib.md5()
        self.size = 0
        self.algorithm = checksum
        self._checksum: Any = None
        if checksum == "crc32":
            self._checksum = _Crc32()
        elif checksum in ("sha1", "sha256"):
            self._checksum = hashlib.new(checksum)

    def write(self, data: bytes) -> None:
        assert self._fh is not None
        with disk_full_is_an_answer():
            disk_write(len(data))
            self._fh.write(data)
        self.md5.update(data)
        if self._checksum is not None:
            self._checksum.update(data)
        self.size += len(data)

    def checksum_b64(self) -> str | None:
        """The base64 checksum of what was written, ``None`` when it is not computed here."""
        if self._checksum is None:
            return None
        return base64.b64encode(self._checksum.digest()).decode()

    def finish(self) -> None:
        """Flush and fsync; the file is then ready to be committed."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)

    @property
    def etag(self) -> str:
        return f'"{self.md5.hexdigest()}"'
