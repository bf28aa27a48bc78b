"""A script's ``requirements.txt``, installed as the framework containers do, but cached.

Packages go into ``<home>/requirements/<hash of the file>``, a directory appended to ``sys.path``, so
the environment mainsail runs in is never modified and a second start installs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from mainsail.errors import ModelLoadError

logger = logging.getLogger(__name__)


def missing_requirements(requirements: Path) -> list[str]:
    """The lines of ``requirements`` that the current environment does not satisfy."""
    missing: list[str] = []
    for line in requirements.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement:
            missing.append(text)
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (installed: {version})")
    return missing


def install_requirements(requirements: Path, cache_root: Path) -> Path:
    """Install into a per-file directory (once) and return it, for ``sys.path``."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:24]
    target = cache_root / digest
    if (target / ".mainsail-complete").exists():
        return target
    missing = missing_requirements(requirements)
    conflicts = [m for m in missing if "(installed:" in m]
    if conflicts:
        # The directory goes at the end of sys.path: what the serving environment already has wins,
        # so a script never gets a second numpy (or torch) with a different binary interface.
        logger.warning("%s asks for versions other than those installed; the installed ones are used: %s",
                       requirements, "; ".join(conflicts))
    cache_root.mkdir(parents=True, exist_ok=True)
    if not missing:
        target.mkdir(exist_ok=True)
        (target / ".mainsail-complete").touch()
        return target
    logger.info("installing %s (%s) into %s", requirements, ", ".join(missing), target)
    staging = Path(tempfile.mkdtemp(prefix=".pip-", dir=cache_root))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--target", str(staging), "-r", str(requirements)],
            cwd=requirements.parent, capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise ModelLoadError(
                f"pip could not install {requirements}: {result.stderr.strip()[-2000:]}"
            )
        (staging / ".mainsail-complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
