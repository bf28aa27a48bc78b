"""Turning the MODEL argument into a model directory and an inference script, as containers do.

A ``model.tar.gz`` is extracted (safely: no absolute paths, no ``..``, no links leaving the target,
no device files, bounded size and member count) into a cache keyed by the archive's content. The
script is found where the SageMaker framework containers look: ``SAGEMAKER_SUBMIT_DIRECTORY`` (a
directory or ``sourcedir.tar.gz``) first, then ``<model>/code``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mainsail.archives import safe_extract
from mainsail.errors import ModelLoadError
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)

DEFAULT_ENTRY_POINT = "inference.py"


@dataclass(frozen=True)
class PreparedModel:
    """Where the model and its script are on disk, ready for a worker to load."""

    model_dir: Path
    script: Path | None
    code_dir: Path | None


def is_archive(path: Path) -> bool:
    return path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar")))


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:24]


def extract_cached(archive: Path, cache_root: Path) -> Path:
    """Extract once per archive content; later calls reuse the directory."""
    target = cache_root / _digest(archive)
    if (target / ".mainsail-complete").exists():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_root))
    try:
        safe_extract(archive, staging)
        (staging / ".mainsail-complete").touch()
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / ".mainsail-complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("extracted %s into %s", archive, target)
    return target


def _resolve_source_dir(source_dir: str, home: Path) -> Path:
    if source_dir.startswith("s3://"):
        raise ModelLoadError(
            f"source dir {source_dir}: mainsail serve reads local paths; download it first "
            "(mainsail up fetches s3:// sources itself)"
        )
    path = Path(source_dir.removeprefix("file://")).expanduser()
    if is_archive(path):
        return extract_cached(path, home / "sources")
    return path


def prepare_model(settings: ServeSettings) -> PreparedModel:
    """Locate (and if needed extract) the model directory and the inference script."""
    raw = settings.model_path.removeprefix("file://")
    if raw.startswith("s3://"):
        raise ModelLoadError(
            f"model {raw}: mainsail serve reads local paths; download it first "
            "(mainsail up fetches s3:// model data itself)"
        )
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
    model_dir = extract_cached(path, settings.home / "models") if is_archive(path) else path
    if not model_dir.is_dir():
        raise ModelLoadError(f"model path {path} is neither a directory nor a .tar.gz archive")

    entry = settings.entry_point
    candidates: list[Path] = []
    if entry and Path(entry).expanduser().is_file() and (os.sep in entry or settings.source_dir is None):
        explicit = Path(entry).expanduser().resolve()
        return PreparedModel(model_dir, explicit, explicit.parent)
    name = entry or DEFAULT_ENTRY_POINT
    if not name.endswith(".py"):
        name += ".py"
    if settings.source_dir:
        candidates.append(_resolve_source_dir(settings.source_dir, settings.home) / name)
    candidates.append(model_dir / "code" / name)
    for candidate in candidates:
        if candidate.is_file():
            return PreparedModel(model_dir, candidate.resolve(), candidate.parent.resolve())
    if entry or settings.source_dir:
        looked = ", ".join(str(c) for c in candidates)
        raise ModelLoadError(f"inference script {name} not found (looked in {looked})")
    code_dir = model_dir / "code"
    return PreparedModel(model_dir, None, code_dir if code_dir.is_dir() else None)
