"""A model's ``code/requirements.txt``, made to win as in the framework containers, without touching
the environment mainsail runs in.

The container pip-installs the file into its own Python, so a pin (``transformers==4.38.0``) is what
the script imports. mainsail does the same per model, as an *overlay*:

1. **Plan.** pip resolves the file against the running environment (``pip install --dry-run
   --report``): what the environment already satisfies stays; what is missing or pinned to another
   version is the plan. torch is constrained to the torch installed here (the index's plain ``torch`` is
   a multi-GB CUDA build): a requirement that needs another torch, or torch where none is installed, is
   refused with pip's reason, never downloaded.
2. **Check.** A planned version of a package mainsail itself imports while it serves (its core
   dependencies, followed through the installed packages) that falls outside what mainsail requires is
   a conflict: the load fails before any request, naming both versions.
3. **Install.** Exactly the planned artifacts (``--no-deps``, the URLs pip chose) go into
   ``<home>/requirements/<key>``, with ``uv`` where it is installed (much faster) and pip otherwise; the
   installer's output is logged line by line. The key hashes the file, the Python version and the
   environment's installed distributions, so a second start reuses the overlay without resolving.
4. **Use.** The overlay goes *before* the environment on ``sys.path`` of the processes that serve the
   model (the spawned workers get it before they import anything), so the pins win.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

from mainsail.errors import ModelLoadError

logger = logging.getLogger(__name__)

_DONE = ".mainsail-plan.json"
_TORCH = "torch"


class RequirementsConflict(ModelLoadError):
    """``requirements.txt`` needs a version of a package that the serving process cannot run with."""


@dataclass(frozen=True)
class Change:
    """One package the overlay provides: ``version`` instead of ``installed`` (None: not installed)."""

    name: str
    version: str
    installed: str | None
    spec: str
    """What the installer is given: ``name @ url`` (the artifact pip chose)."""

    def describe(self) -> str:
        was = f" (installed here: {self.installed})" if self.installed else ""
        return f"{self.name} {self.version}{was}"


@dataclass(frozen=True)
class Overlay:
    """The outcome for one ``requirements.txt``: the directory to put first on ``sys.path`` (None when
    the environment satisfies every line) and the packages it provides."""

    path: Path | None
    changes: tuple[Change, ...] = ()
    replaced: tuple[Change, ...] = field(default=())
    """The changes that replace a version installed here: the pins that win."""

    @property
    def paths(self) -> list[str]:
        return [str(self.path)] if self.path is not None else []


def missing_requirements(requirements: Path) -> list[str]:
    """The lines of ``requirements`` that the current environment does not satisfy (no resolving)."""
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


# -- what mainsail itself needs -------------------------------------------------------------------
def mainsail_needs() -> dict[str, list[tuple[str, SpecifierSet]]]:
    """For each package the serving process imports, who requires it and with which versions.

    mainsail's core dependencies (no extras: those serve the built-in handlers, which a script that
    pins its own scikit-learn does not use), followed through the installed distributions with the
    extras each requirement asks for (``uvicorn[standard]``).
    """
    needs: dict[str, list[tuple[str, SpecifierSet]]] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    stack: list[tuple[str, frozenset[str]]] = [("mainsail", frozenset())]
    while stack:
        name, extras = stack.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            lines = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        environments = [{"extra": extra} for extra in sorted(extras | {""})]
        for line in lines:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not any(req.marker.evaluate(env) for env in environments):
                continue
            dep = canonicalize_name(req.name)
            needs.setdefault(dep, []).append((name, req.specifier))
            stack.append((dep, frozenset(req.extras)))
    return needs


def conflicts_with_mainsail(changes: Iterable[Change],
                            needs: dict[str, list[tuple[str, SpecifierSet]]] | None = None) -> list[str]:
    """One sentence per planned version that a package the serving process imports cannot run with."""
    needs = mainsail_needs() if needs is None else needs
    out: list[str] = []
    for change in changes:
        for who, specifier in needs.get(canonicalize_name(change.name), []):
            try:
                ok = specifier.contains(change.version, prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                installed = f", installed here: {change.installed}" if change.installed else ""
                via = "mainsail" if who == "mainsail" else f"mainsail (through {who})"
                out.append(f"code/requirements.txt needs {change.name} {change.version}, but {via} needs "
                           f"{change.name}{specifier}{installed}")
    return out


# -- planning --------------------------------------------------------------------------------------
def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _spec(item: dict[str, object]) -> str:
    meta = item["metadata"]
    info = item["download_info"]
    assert isinstance(meta, dict) and isinstance(info, dict)
    url = str(info["url"])
    vcs = info.get("vcs_info")
    if isinstance(vcs, dict):
        url = f"{vcs['vcs']}+{url}@{vcs['commit_id']}"
    return f"{meta['name']} @ {url}"


def _pip_failure(output: str) -> str:
    """pip's reason, without its generic advice."""
    lines = [line.rstrip() for line in output.splitlines()]
    keep = [line for line in lines if line.startswith("ERROR:") and "dealing-with-dependency-conflicts" not in line]
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:")
        block = []
        for line in lines[start:]:
            if not line.strip():
                break
            block.append(line.strip())
        keep.append(" ".join(block))
    text = " ".join(keep) if keep else output.strip()
    return text[-2000:]


def plan_requirements(requirements: Path) -> list[Change]:
    """What ``requirements`` needs beyond the running environment (pip resolves; nothing installed).

    Raises ``ModelLoadError`` with pip's reason when the file cannot be resolved, and when it needs a
    torch other than the installed one (or torch where none is installed).
    """
    torch = _installed_version(_TORCH)
    with tempfile.TemporaryDirectory(prefix="mainsail-plan-") as scratch:
        report = Path(scratch) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--report", str(report),
               "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-r", str(requirements)]
        if torch is not None:
            constraints = Path(scratch) / "constraints.txt"
            constraints.write_text(f"{_TORCH}=={torch.split('+')[0]}\n")
            cmd += ["-c", str(constraints)]
        result = subprocess.run(cmd, cwd=requirements.parent, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            reason = _pip_failure(result.stdout + "\n" + result.stderr)
            if torch is not None and re.search(r"\btorch\b", reason):
                reason = (f"it needs a torch other than the installed {torch}, which mainsail does not download "
                          f"(the index's torch is a multi-GB CUDA build; install the torch it needs yourself): "
                          f"{reason}")
            raise ModelLoadError(f"pip cannot resolve {requirements}: {reason}")
        items = json.loads(report.read_text()).get("install", [])
    changes = [Change(name=str(item["metadata"]["name"]), version=str(item["metadata"]["version"]),
                      installed=_installed_version(str(item["metadata"]["name"])), spec=_spec(item))
               for item in items]
    if torch is None and any(canonicalize_name(c.name) == _TORCH for c in changes):
        raise ModelLoadError(
            f"{requirements} needs torch, which is not installed here; mainsail does not download torch (the "
            f"index's torch is a multi-GB CUDA build): install it first, e.g. pip install torch==<version> "
            f"--index-url https://download.pytorch.org/whl/cpu")
    return changes


# -- installing ------------------------------------------------------------------------------------
def _uv() -> str | None:
    """The ``uv`` binary: the one installed beside this Python (the ``uv`` package), else on PATH; None
    where there is none or ``MAINSAIL_INSTALLER=pip`` asks for pip."""
    if os.environ.get("MAINSAIL_INSTALLER", "").strip().lower() == "pip":
        return None
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")


def _run_logged(cmd: list[str], cwd: Path) -> tuple[int, str]:
    """Run an installer, logging each line it prints (the progress) and keeping them for the error."""
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "NO_COLOR": "1"}) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                logger.info("  %s", line)
    return proc.returncode, "\n".join(lines)


def _install(changes: list[Change], target: Path, cwd: Path) -> None:
    specs = [c.spec for c in changes]
    uv = _uv()
    if uv is not None:
        cmd = [uv, "pip", "install", "--no-deps", "--no-config", "--target", str(target),
               "--python", sys.executable, *specs]
    else:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
               "--disable-pip-version-check", "--no-input", "--progress-bar", "off", *specs]
    logger.info("installing %d package(s) with %s into %s: %s", len(changes), "uv" if uv else "pip", target,
                ", ".join(f"{c.name}=={c.version}" for c in changes))
    code, output = _run_logged(cmd, cwd)
    if code != 0:
        raise ModelLoadError(f"{'uv' if uv else 'pip'} could not install {', '.join(specs)}: {output[-2000:]}")


def environment_key() -> str:
    """What the plan depends on besides the file: this Python and the distributions installed."""
    names: list[str] = [sys.version]
    for directory in dict.fromkeys([*site.getsitepackages(), site.getusersitepackages()]):
        try:
            names.extend(sorted(n for n in os.listdir(directory) if n.endswith((".dist-info", ".egg-info"))))
        except OSError:
            continue
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _load_done(target: Path) -> Overlay | None:
    try:
        saved = json.loads((target / _DONE).read_text())
    except (OSError, ValueError):
        return None
    changes = tuple(Change(**c) for c in saved["changes"])
    return _overlay(target, changes)


def _overlay(target: Path, changes: tuple[Change, ...]) -> Overlay:
    return Overlay(path=target if changes else None, changes=changes,
                   replaced=tuple(c for c in changes if c.installed is not None))


def prepare_requirements(requirements: Path, cache_root: Path) -> Overlay:
    """Plan, check and install ``requirements`` (once per file and environment); the overlay to use.

    Processes starting the same model at once (the instances of one endpoint) take turns on a lock file
    per overlay: the first installs, the others find it installed. An overlay, once complete, is never
    replaced (workers of other processes may be importing from it)."""
    digest = hashlib.sha256(requirements.read_bytes() + environment_key().encode()).hexdigest()[:24]
    target = cache_root / digest
    done = _load_done(target)
    if done is None:
        cache_root.mkdir(parents=True, exist_ok=True)
        with open(cache_root / f".{digest}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            done = _load_done(target)
            if done is None:
                return _prepare(requirements, cache_root, target)
    if done.changes:
        logger.info("%s: using the installed overlay %s (%s)", requirements, target,
                    ", ".join(c.describe() for c in done.changes))
    return done


def _prepare(requirements: Path, cache_root: Path, target: Path) -> Overlay:
    logger.info("resolving %s against this environment", requirements)
    changes = plan_requirements(requirements)
    conflicts = conflicts_with_mainsail(changes)
    if conflicts:
        raise RequirementsConflict("; ".join(conflicts) + ": the serving process cannot use both. Relax the pin, or "
                             "serve with --no-install-requirements to use the installed version")
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=cache_root))
    try:
        if changes:
            _install(changes, staging, requirements.parent)
        (staging / _DONE).write_text(json.dumps({"changes": [c.__dict__ for c in changes]}, indent=1))
        shutil.rmtree(target, ignore_errors=True)  # an incomplete one (a start killed mid-install)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    overlay = _overlay(target, tuple(changes))
    for change in overlay.replaced:
        logger.info("%s pins %s: it is used before the environment's %s", requirements.name,
                    f"{change.name}=={change.version}", change.installed)
    if not changes:
        logger.info("%s: this environment satisfies every requirement", requirements)
    return overlay


def top_level_modules(directory: Path) -> set[str]:
    """The importable names an overlay directory provides (its top-level packages and modules)."""
    names: set[str] = set()
    try:
        entries = list(directory.iterdir())
    except OSError:
        return names
    for entry in entries:
        if entry.name.startswith((".", "_")) or entry.name.endswith((".dist-info", ".egg-info", ".data")):
            continue
        if entry.is_dir() and entry.name != "bin":
            names.add(entry.name)
        elif entry.suffix in (".py", ".so", ".pyd"):
            names.add(entry.name.split(".")[0])
    return names


def imported_elsewhere(paths: Iterable[str]) -> list[str]:
    """Modules the overlay directories provide that this process has already imported from elsewhere:
    their pins cannot win in this process."""
    out: list[str] = []
    for path in paths:
        for name in sorted(top_level_modules(Path(path))):
            module = sys.modules.get(name)
            origin = getattr(module, "__file__", None) or ""
            if module is not None and not origin.startswith(path):
                out.append(name)
    return out


def put_first(paths: Iterable[str], after: int = 0) -> None:
    """Put ``paths`` at position ``after`` of ``sys.path`` (moved there if present), in order."""
    paths = list(paths)
    for path in paths:
        while path in sys.path:
            sys.path.remove(path)
    sys.path[after:after] = paths
