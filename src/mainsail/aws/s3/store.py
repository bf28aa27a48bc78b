"""Durable storage behind mainsail's S3 API (:mod:`mainsail.aws.s3.api`).

Layout under the root (``$MAINSAIL_HOME/s3`` for ``mainsail up``)::

    tmp/                                  bodies being written (never visible as objects)
    buckets/<bucket>/bucket.json          {"created": epoch, "region": "us-east-1"}
    buckets/<bucket>/meta/<sha256(key)>.json   one object's metadata (its key, size, ETag, headers...)
    buckets/<bucket>/data/<uuid>          one object's bytes, named by its metadata
    buckets/<bucket>/uploads/<id>/upload.json  a multipart upload in progress
    buckets/<bucket>/uploads/<id>/<part:05d>.<md5 hex>   its parts

Why files with a JSON sidecar rather than SQLite: an object's bytes must be a file anyway (streamed
in, streamed out with ranges, read directly by :mod:`mainsail.backends.model_fetch`), and a sidecar
written with the same temp-file + fsync + rename protocol makes the *sidecar rename* the single
commit point of a write: the bytes go to ``tmp/``, are fsynced and renamed to a fresh
``data/<uuid>``, then the sidecar naming that file replaces the old one. A crash at any step leaves
either the old object or the new one, never a half-written body; what it can leave behind
(``tmp/`` files, ``data/`` files no sidecar names) is removed at the next start once older than
``stale_after`` seconds. There is no second database to keep in step with the files, and nothing
to migrate. Listing reads every sidecar of a bucket, which is fine at the scale of a local
emulator (thousands of objects).

Keys never touch the file system: a key is only ever stored inside a sidecar, and its file name is
the SHA-256 of the key, so ``../``, absolute-looking keys, unicode or 1024-byte keys are all safe.
Bucket names are validated (S3's rules) before they name a directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

DEFAULT_REGION = "us-east-1"
STALE_AFTER = 3600.0
"""Seconds after which an unreferenced temp or data file is taken for a crash's leftover."""
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10000
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_RE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_PART_RE = re.compile(r"(\d{5})\.([0-9a-f]{32})")
CHECKSUMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


class S3Error(Exception):
    """An S3 error answer: ``code`` (``NoSuchKey``...), HTTP status and extra XML fields."""

    def __init__(self, code: str, status: int, message: str, **fields: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.fields = fields


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


def _fsync_dir(path: Path) -> None:
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


def _write_json(path: Path, data: dict[str, Any], tmp_dir: Path) -> None:
    """Atomically replace ``path`` with ``data`` (temp file in ``tmp_dir``, fsync, rename)."""
    tmp = tmp_dir / f"{uuid.uuid4().hex}.json"
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_json(path: Path) -> dict[str, Any] | None:
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


class S3Store:
    """Buckets, objects and multipart uploads under ``root`` (see the module docstring).

    Methods block (file I/O): call them from a thread pool. ``clean=False`` opens the store without
    removing a crash's leftovers (for readers such as :mod:`mainsail.backends.model_fetch`).
    """

    def __init__(self, root: Path, *, stale_after: float = STALE_AFTER, clean: bool = True) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.buckets_dir = self.root / "buckets"
        self.stale_after = stale_after
        self._lock = threading.RLock()
        if clean:
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.buckets_dir.mkdir(parents=True, exist_ok=True)
            self.clean()

    # -- start-up clean-up ----------------------------------------------------------------------

    def clean(self) -> int:
        """Remove temp files and unreferenced data files older than ``stale_after``; the count."""
        cutoff = time.time() - self.stale_after
        removed = 0

        def old(path: Path) -> bool:
            try:
                return path.lstat().st_mtime <= cutoff
            except OSError:
                return False

        with self._lock:
            for entry in list(self.tmp.iterdir()) if self.tmp.is_dir() else []:
                if old(entry):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed += 1
            for bucket_dir in self._bucket_dirs():
                referenced = {meta.data for meta in self._all_meta(bucket_dir)}
                data_dir = bucket_dir / "data"
                for entry in list(data_dir.iterdir()) if data_dir.is_dir() else []:
                    if entry.name not in referenced and old(entry):
                        entry.unlink(missing_ok=True)
                        removed += 1
        return removed

    # -- buckets --------------------------------------------------------------------------------

    def _bucket_dirs(self) -> list[Path]:
        if not self.buckets_dir.is_dir():
            return []
        return sorted(p for p in self.buckets_dir.iterdir() if p.is_dir() and (p / "bucket.json").is_file())

    def _bucket_dir(self, name: str) -> Path:
        """The directory of an existing bucket; ``NoSuchBucket`` otherwise."""
        if not valid_bucket_name(name):
            raise no_such_bucket(name)
        path = self.buckets_dir / name
        if not (path / "bucket.json").is_file():
            raise no_such_bucket(name)
        return path

    def list_buckets(self) -> list[Bucket]:
        out = []
        for path in self._bucket_dirs():
            raw = _read_json(path / "bucket.json") or {}
            out.append(Bucket(path.name, float(raw.get("created", 0.0)), str(raw.get("region") or DEFAULT_REGION)))
        return out

    def bucket(self, name: str) -> Bucket:
        path = self._bucket_dir(name)
        raw = _read_json(path / "bucket.json") or {}
        return Bucket(name, float(raw.get("created", 0.0)), str(raw.get("region") or DEFAULT_REGION))

    def create_bucket(self, name: str, region: str = DEFAULT_REGION) -> bool:
        """Create ``name``; ``False`` when it already exists (S3's answer depends on the region)."""
        if not valid_bucket_name(name):
            raise S3Error("InvalidBucketName", 400, "The specified bucket is not valid.", BucketName=name)
        with self._lock:
            path = self.buckets_dir / name
            if (path / "bucket.json").is_file():
                return False
            staging = self.tmp / f"bucket-{uuid.uuid4().hex}"
            (staging / "meta").mkdir(parents=True)
            (staging / "data").mkdir()
            (staging / "uploads").mkdir()
            _write_json(staging / "bucket.json", {"created": time.time(), "region": region}, self.tmp)
            if path.exists():  # a leftover without bucket.json
                shutil.rmtree(path, ignore_errors=True)
            os.rename(staging, path)
            _fsync_dir(self.buckets_dir)
            return True

    def delete_bucket(self, name: str) -> None:
        with self._lock:
            path = self._bucket_dir(name)
            if any((path / "meta").iterdir()):
                raise S3Error("BucketNotEmpty", 409, "The bucket you tried to delete is not empty",
                              BucketName=name)
            doomed = self.tmp / f"deleted-{uuid.uuid4().hex}"
            os.rename(path, doomed)
            _fsync_dir(self.buckets_dir)
            shutil.rmtree(doomed, ignore_errors=True)

    # -- objects --------------------------------------------------------------------------------

    def new_temp(self, checksum: str | None = None) -> TempFile:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return TempFile(self.tmp, checksum)

    def _meta_path(self, bucket_dir: Path, key: str) -> Path:
        return bucket_dir / "meta" / f"{key_digest(key)}.json"

    def _all_meta(self, bucket_dir: Path) -> Iterator[ObjectMeta]:
        meta_dir = bucket_dir / "meta"
        if not meta_dir.is_dir():
            return
        for entry in meta_dir.iterdir():
            if entry.suffix == ".json":
                raw = _read_json(entry)
                if raw is not None and "key" in raw:
                    yield ObjectMeta.from_json(raw)

    def head(self, bucket: str, key: str) -> ObjectMeta:
        bucket_dir = self._bucket_dir(bucket)
        raw = _read_json(self._meta_path(bucket_dir, key))
        if raw is None:
            raise no_such_key(key)
        return ObjectMeta.from_json(raw)

    def open(self, bucket: str, key: str) -> tuple[ObjectMeta, IO[bytes]]:
        """The metadata and an open file of one object (a concurrent overwrite is retried)."""
        for _ in range(5):
            meta = self.head(bucket, key)
            try:
                return meta, (self.buckets_dir / bucket / "data" / meta.data).open("rb")
            except FileNotFoundError:
                continue  # replaced between the two reads
        raise no_such_key(key)

    def data_path(self, bucket: str, meta: ObjectMeta) -> Path:
        return self.buckets_dir / bucket / "data" / meta.data

    def commit(self, bucket: str, temp: TempFile, meta: ObjectMeta) -> ObjectMeta:
        """Make ``temp`` (finished) the object ``meta.key``: data rename, then sidecar rename."""
        temp.finish()
        try:
            with self._lock:
                bucket_dir = self._bucket_dir(bucket)
                meta.data = uuid.uuid4().hex
                meta.size = temp.size
                meta.last_modified = time.time()
                if not meta.etag:
                    meta.etag = temp.etag
                os.rename(temp.path, bucket_dir / "data" / meta.data)
                _fsync_dir(bucket_dir / "data")
                meta_path = self._meta_path(bucket_dir, meta.key)
                old = _read_json(meta_path)
                _write_json(meta_path, asdict(meta), self.tmp)
                if old and old.get("data") and old.get("data") != meta.data:
                    (bucket_dir / "data" / str(old["data"])).unlink(missing_ok=True)
                return meta
        finally:
            temp.path.unlink(missing_ok=True)

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            bucket_dir = self._bucket_dir(bucket)
            meta_path = self._meta_path(bucket_dir, key)
            old = _read_json(meta_path)
            if old is None:
                return
            meta_path.unlink(missing_ok=True)
            _fsync_dir(meta_path.parent)
            if old.get("data"):
                (bucket_dir / "data" / str(old["data"])).unlink(missing_ok=True)

    def list_objects(self, bucket: str, prefix: str = "") -> list[ObjectMeta]:
        """Every object whose key starts with ``prefix``, sorted by key (UTF-8 byte order, as S3)."""
        bucket_dir = self._bucket_dir(bucket)
        found = [m for m in self._all_meta(bucket_dir) if m.key.startswith(prefix)]
        found.sort(key=lambda m: m.key.encode("utf-8", "surrogatepass"))
        return found

    def copy(self, src_bucket: str, src_key: str, bucket: str, meta: ObjectMeta | None,
             key: str) -> ObjectMeta:
        """Copy an object; ``meta`` replaces the source's metadata (``REPLACE``) when given."""
        self._bucket_dir(bucket)
        source, fh = self.open(src_bucket, src_key)
        temp = self.new_temp(source.checksum.get("algorithm"))
        try:
            with fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    temp.write(block)
        except BaseException:
            temp.abort()
            raise
        new = meta or ObjectMeta(key=key, content_type=source.content_type, headers=dict(source.headers),
                                 metadata=dict(source.metadata))
        new.key = key
        new.etag = ""  # the MD5 of the copied bytes, as S3 gives a copy (even of a multipart object)
        new.checksum = dict(source.checksum)
        return self.commit(bucket, temp, new)

    # -- multipart uploads ----------------------------------------------------------------------

    def _upload_dir(self, bucket: str, upload_id: str, key: str | None = None) -> Path:
        bucket_dir = self._bucket_dir(bucket)
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id or ""):
            raise no_such_upload(upload_id)
        path = bucket_dir / "uploads" / upload_id
        raw = _read_json(path / "upload.json")
        if raw is None or (key is not None and raw.get("key") != key):
            raise no_such_upload(upload_id)
        return path

    def create_upload(self, bucket: str, meta: ObjectMeta) -> str:
        with self._lock:
            bucket_dir = self._bucket_dir(bucket)
            upload_id = uuid.uuid4().hex
            staging = self.tmp / f"upload-{upload_id}"
            staging.mkdir(parents=True)
            record = asdict(meta)
            record["initiated"] = time.time()
            _write_json(staging / "upload.json", record, self.tmp)
            os.rename(staging, bucket_dir / "uploads" / upload_id)
            _fsync_dir(bucket_dir / "uploads")
            return upload_id

    def upload_meta(self, bucket: str, upload_id: str, key: str | None = None) -> ObjectMeta:
        path = self._upload_dir(bucket, upload_id, key)
        return ObjectMeta.from_json(_read_json(path / "upload.json") or {"key": key or ""})

    def put_part(self, bucket: str, key: str, upload_id: str, number: int, temp: TempFile) -> str:
        temp.finish()
        try:
            with self._lock:
                path = self._upload_dir(bucket, upload_id, key)
                name = f"{number:05d}.{temp.md5.hexdigest()}"
                os.rename(temp.path, path / name)
                for old in path.glob(f"{number:05d}.*"):
                    if old.name != name:
                        old.unlink(missing_ok=True)
                _fsync_dir(path)
                return temp.etag
        finally:
            temp.path.unlink(missing_ok=True)

    def parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        path = self._upload_dir(bucket, upload_id, key)
        out = []
        for entry in path.iterdir():
            match = _PART_RE.fullmatch(entry.name)
            if match:
                st = entry.stat()
                out.append(Part(int(match.group(1)), f'"{match.group(2)}"', st.st_size, st.st_mtime, entry))
        out.sort(key=lambda p: p.number)
        return out

    def complete_upload(self, bucket: str, key: str, upload_id: str,
                        wanted: list[tuple[int, str]]) -> ObjectMeta:
        """Assemble the listed parts (number, ETag) into the object; S3's checks and ETag."""
        meta = self.upload_meta(bucket, upload_id, key)
        have = {p.number: p for p in self.parts(bucket, key, upload_id)}
        if not wanted:
            raise S3Error("MalformedXML", 400, "The XML you provided was not well-formed or did not "
                          "validate against our published schema")
        numbers = [n for n, _ in wanted]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise S3Error("InvalidPartOrder", 400, "The list of parts was not in ascending order. "
                          "Parts must be ordered by part number.", UploadId=upload_id)
        chosen: list[Part] = []
        for number, etag in wanted:
            part = have.get(number)
            if part is None or part.etag.strip('"') != etag.strip().strip('"'):
                raise S3Error("InvalidPart", 400, "One or more of the specified parts could not be found. "
                              "The part may not have been uploaded, or the specified entity tag may not "
                              "match the part's entity tag.", UploadId=upload_id, PartNumber=str(number),
                              ETag=etag)
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < MIN_PART_SIZE:
                raise S3Error("EntityTooSmall", 400, "Your proposed upload is smaller than the minimum "
                              "allowed object size.", ProposedSize=str(part.size),
                              MinSizeAllowed=str(MIN_PART_SIZE), PartNumber=str(part.number),
                              ETag=part.etag)
        temp = self.new_temp()
        try:
            for part in chosen:
                with part.path.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                        temp.write(block)
        except FileNotFoundError:  # aborted (or completed) meanwhile
            temp.abort()
            raise no_such_upload(upload_id) from None
        except BaseException:
            temp.abort()
            raise
        digests = b"".join(bytes.fromhex(p.etag.strip('"')) for p in chosen)
        meta.key = key
        meta.etag = f'"{hashlib.md5(digests).hexdigest()}-{len(chosen)}"'
        meta.checksum = {}
        with self._lock:
            # the upload must still be there (not aborted or completed meanwhile)
            try:
                upload_dir = self._upload_dir(bucket, upload_id, key)
            except S3Error:
                temp.abort()
                raise
            done = self.commit(bucket, temp, meta)
            doomed = self.tmp / f"done-{upload_id}"
            os.rename(upload_dir, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            return done

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        with self._lock:
            upload_dir = self._upload_dir(bucket, upload_id, key)
            doomed = self.tmp / f"aborted-{upload_id}"
            os.rename(upload_dir, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def uploads(self, bucket: str) -> list[tuple[str, ObjectMeta, float]]:
        """The uploads in progress: (id, metadata, initiated)."""
        bucket_dir = self._bucket_dir(bucket)
        out = []
        for path in sorted((bucket_dir / "uploads").iterdir()):
            raw = _read_json(path / "upload.json")
            if raw is not None:
                out.append((path.name, ObjectMeta.from_json(raw), float(raw.get("initiated", 0.0))))
        out.sort(key=lambda u: (u[1].key, u[2]))
        return out
