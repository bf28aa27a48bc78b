"""The content-addressed cache of model data: each content extracted once, published atomically.

An archive is extracted (safely, with :func:`mainsail.archives.safe_extract`, after refusing absolute
member names and ``..``) into ``<cache_dir>/<sha256[:24]>/``. A cache directory is built in a staging
directory beside it and renamed into place with a ``.mainsail-complete`` marker, so a half-written one
is never used and concurrent callers are safe: whoever publishes first wins. ``<cache_root>/s3-index.json``
(:class:`S3Index`) maps an S3 object's (ETag, size) to the directory built from it, so that an
unchanged object is not downloaded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any

from mainsail.archives import safe_extract
from mainsail.backends.base import ModelSourceError
from mainsail.backends.model_sources import DEFAULT_MAX_BYTES, one_line
from mainsail.errors import InvalidModelArchive

COMPLETE = ".mainsail-complete"  # the marker mainsail.serve.model_dir uses too
INDEX_NAME = "s3-index.json"

_index_lock = threading.Lock()


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def new_staging(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))


def publish(staging: Path, target: Path, url: str) -> Path:
    """Move the finished ``staging`` directory to ``target``; whoever is first wins."""
    (staging / COMPLETE).touch()
    try:
        os.rename(staging, target)
    except OSError:
        if is_complete(target):
            return target  # another caller finished the same content first
        shutil.rmtree(target, ignore_errors=True)  # a stray, unfinished directory
        try:
            os.rename(staging, target)
        except OSError as exc:
            if not is_complete(target):
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
        raise ModelSourceError(f"Model archive {url} cannot be read: {one_line(str(exc))}") from None


def extract_archive(archive: Path, cache_dir: Path, url: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Extract ``archive`` once per content into ``cache_dir/<sha256[:24]>`` and return that directory."""
    limit = max_bytes
    try:
        target = cache_dir / _sha256_file(archive)[:24]
    except OSError as exc:
        raise ModelSourceError(f"Model archive {url} cannot be read: {one_line(str(exc))}") from None
    if is_complete(target):
        return target
    _check_members(archive, url)
    staging = new_staging(cache_dir)
    try:
        try:
            safe_extract(archive, staging, max_bytes=limit)
        except InvalidModelArchive as exc:
            raise ModelSourceError(f"Model archive {url}: {one_line(exc.message)}") from None
        return publish(staging, target, url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class S3Index:
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
        return path if is_complete(path) else None

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
