"""Durable storage behind mainsail's S3 API (:mod:`mainsail.aws.s3.api`): the S3Store.

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

import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO

from mainsail.aws.identity import DEFAULT_REGION
from mainsail.aws.s3.files import (
    MIN_PART_SIZE,
    Bucket,
    ObjectMeta,
    Part,
    S3Error,
    TempFile,
    fsync_dir,
    key_digest,
    no_such_bucket,
    no_such_key,
    no_such_upload,
    read_json,
    valid_bucket_name,
    write_json,
)

STALE_AFTER = 3600.0
"""Seconds after which an unreferenced temp or data file is taken for a crash's leftover."""
_PART_RE = re.compile(r"(\d{5})\.([0-9a-f]{32})")


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
            raw = read_json(path / "bucket.json") or {}
            out.append(Bucket(path.name, float(raw.get("created", 0.0)), str(raw.get("region") or DEFAULT_REGION)))
        return out

    def bucket(self, name: str) -> Bucket:
        path = self._bucket_dir(name)
        raw = read_json(path / "bucket.json") or {}
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
            write_json(staging / "bucket.json", {"created": time.time(), "region": region}, self.tmp)
            if path.exists():  # a leftover without bucket.json
                shutil.rmtree(path, ignore_errors=True)
            os.rename(staging, path)
            fsync_dir(self.buckets_dir)
            return True

    def delete_bucket(self, name: str) -> None:
        with self._lock:
            path = self._bucket_dir(name)
            if any((path / "meta").iterdir()):
                raise S3Error("BucketNotEmpty", 409, "The bucket you tried to delete is not empty",
                              BucketName=name)
            doomed = self.tmp / f"deleted-{uuid.uuid4().hex}"
            os.rename(path, doomed)
            fsync_dir(self.buckets_dir)
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
                raw = read_json(entry)
                if raw is not None and "key" in raw:
                    yield ObjectMeta.from_json(raw)

    def head(self, bucket: str, key: str) -> ObjectMeta:
        bucket_dir = self._bucket_dir(bucket)
        raw = read_json(self._meta_path(bucket_dir, key))
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
                fsync_dir(bucket_dir / "data")
                meta_path = self._meta_path(bucket_dir, meta.key)
                old = read_json(meta_path)
                write_json(meta_path, asdict(meta), self.tmp)
                if old and old.get("data") and old.get("data") != meta.data:
                    (bucket_dir / "data" / str(old["data"])).unlink(missing_ok=True)
                return meta
        finally:
            temp.path.unlink(missing_ok=True)

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            bucket_dir = self._bucket_dir(bucket)
            meta_path = self._meta_path(bucket_dir, key)
            old = read_json(meta_path)
            if old is None:
                return
            meta_path.unlink(missing_ok=True)
            fsync_dir(meta_path.parent)
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
        raw = read_json(path / "upload.json")
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
            write_json(staging / "upload.json", record, self.tmp)
            os.rename(staging, bucket_dir / "uploads" / upload_id)
            fsync_dir(bucket_dir / "uploads")
            return upload_id

    def upload_meta(self, bucket: str, upload_id: str, key: str | None = None) -> ObjectMeta:
        path = self._upload_dir(bucket, upload_id, key)
        return ObjectMeta.from_json(read_json(path / "upload.json") or {"key": key or ""})

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
                fsync_dir(path)
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
            raw = read_json(path / "upload.json")
            if raw is not None:
                out.append((path.name, ObjectMeta.from_json(raw), float(raw.get("initiated", 0.0))))
        out.sort(key=lambda u: (u[1].key, u[2]))
        return out
