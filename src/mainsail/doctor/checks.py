"""The static checks of ``mainsail doctor``: the archive, the layout, ``code/requirements.txt`` and the script.

The model is seen the way ``mainsail serve`` (and the SageMaker framework containers) see it: the
archive is extracted with the server's safe extraction, the script imported with the server's
import, and its handler functions resolved and bound with the script handler's rules.
"""

from __future__ import annotations

import difflib
import inspect
import sys
import tarfile
import tempfile
import traceback
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from mainsail.archives import safe_extract
from mainsail.doctor.findings import State, human_size
from mainsail.errors import HandlerError, InvalidModelArchive
from mainsail.handlers.script import HANDLER_NAMES, bind, container_module_hint, import_script
from mainsail.serve.requirements import mainsail_needs, missing_requirements

ARCHIVE_SIZE_WARNING = 10 * 1024**3
EXTRACTED_SIZE_WARNING = 30 * 1024**3

TOOLKIT_FUNCTIONS = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")
SIGNATURES = {
    "model_fn": "model_fn(model_dir)",
    "input_fn": "input_fn(input_data, content_type)",
    "predict_fn": "predict_fn(input_data, model)",
    "output_fn": "output_fn(prediction, accept)",
    "transform_fn": "transform_fn(model, input_data, content_type, accept)",
    "pre_model_fn": "pre_model_fn(model_dir)",
    "model_warmup_fn": "model_warmup_fn(model_dir, model)",
}
_STEMS = {"model": "model_fn", "input": "input_fn", "predict": "predict_fn", "output": "output_fn",
          "transform": "transform_fn", "loadmodel": "model_fn"}
_SUFFIXES = ("function", "func", "fun", "fn", "f")


# -- 1. archive and layout --------------------------------------------------------------------------

def check_archive(archive: Path, state: State) -> Path | None:
    """Readable, safe, and its size; returns the directory it was extracted into (None on failure)."""
    size = archive.stat().st_size
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        state.add("error", "archive.readable", f"{archive.name} is not a readable tar archive: {exc}",
                  "build it with `tar -czf model.tar.gz -C MODEL_DIR .`")
        return None
    extracted = sum(max(m.size, 0) for m in members)
    state.add("ok", "archive.readable", f"{archive.name}: {len(members)} members, {human_size(size)} compressed, "
              f"{human_size(extracted)} extracted")
    if size > ARCHIVE_SIZE_WARNING or extracted > EXTRACTED_SIZE_WARNING:
        state.add("warning", "archive.size",
                  f"{archive.name} is {human_size(size)} ({human_size(extracted)} extracted): downloads and "
                  "extraction this large slow every instance start and may exceed the endpoint's storage volume "
                  "(30 GB by default)",
                  "leave training checkpoints and data out of the archive; raise VolumeSizeInGB and "
                  "ModelDataDownloadTimeoutInSeconds in the production variant if it must be this big")
    target = Path(tempfile.mkdtemp(prefix="mainsail-doctor-"))
    state.cleanup.append(target)
    try:
        safe_extract(archive, target)
    except InvalidModelArchive as exc:
        state.add("error", "archive.safe", exc.message,
                  "build the archive from inside the model directory with plain files only: "
                  "`tar -czf model.tar.gz -C MODEL_DIR .` (no absolute paths, no `..`, no links leaving it)")
        return None
    state.add("ok", "archive.safe", "no absolute paths, `..` members, links out of the archive or device files")
    return target


def _is_junk(name: str) -> bool:
    return name.startswith("._") or name in (".DS_Store", "__MACOSX")


def check_layout(model_dir: Path, *, archive: bool, state: State) -> None:
    """``code/`` at the root; a single top-level folder is the usual mistake."""
    entries = [p for p in model_dir.iterdir() if not _is_junk(p.name)]
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name != "code":
        top = entries[0].name
        if archive:
            state.add("error", "layout.top_level_folder",
                      f"archive has a top-level folder {top}/; SageMaker extracts it into /opt/ml/model, so the "
                      f"files land in /opt/ml/model/{top}/ where no container looks",
                      f"tar from inside it: `tar -czf model.tar.gz -C {top} .`")
        else:
            state.add("error", "layout.top_level_folder",
                      f"the model directory holds only the folder {top}/; the containers look at its root",
                      f"point at {model_dir / top} instead")
        return
    if not entries:
        state.add("error", "layout.empty", "the model holds no files", "package the model's files at its root")
        return
    state.add("ok", "layout.root", f"{len(entries)} entries at the root: "
              + ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in entries)[:8]))


# -- 2. the script ----------------------------------------------------------------------------------

def check_requirements(requirements: Path, state: State) -> None:
    """Each line of ``code/requirements.txt`` against the current environment."""
    try:
        missing = missing_requirements(requirements)
    except OSError as exc:
        state.add("error", "requirements.readable", f"cannot read {requirements}: {exc}")
        return
    if not missing:
        state.add("ok", "requirements", f"every line of code/{requirements.name} is satisfied by this environment")
        return
    needs = mainsail_needs()
    for entry in missing:
        if "(installed:" in entry:
            spec, _, installed = entry.partition(" (installed: ")
            installed = installed.rstrip(")")
            try:
                name = Requirement(spec).name
            except InvalidRequirement:
                name = spec
            if conflict := _conflict(spec, needs):
                state.add("error", "requirements.conflict",
                          f"code/requirements.txt asks for {spec} (installed here: {installed}), but {conflict}: "
                          "the serving process cannot use both",
                          f"relax the pin to a version mainsail runs with (`{name}=={installed}`), or serve with "
                          "--no-install-requirements (the installed version is used)")
                continue
            state.add("warning", "requirements.version",
                      f"code/requirements.txt asks for {spec} but {installed} is installed: as the SageMaker "
                      f"container does, mainsail serve installs {spec} for this model and its workers import it "
                      f"before the environment's {installed}",
                      f"nothing to do if {spec} is the version you mean; `mainsail doctor --install-requirements` "
                      "resolves the file and tries the script with it")
        else:
            state.add("warning", "requirements.missing",
                      f"code/requirements.txt needs {entry}, which is not installed here",
                      f"`mainsail serve` installs it at start (--install-requirements, the default), or "
                      f"`pip install '{entry}'`; `mainsail doctor --install-requirements` does the same before the "
                      "import check")


def _candidates(*specifiers: SpecifierSet) -> set[str]:
    """Versions near every boundary the specifiers name: enough to tell whether two ranges meet."""
    out: set[str] = set()
    for specifier in specifiers:
        for clause in specifier:
            text = clause.version.rstrip(".*")
            try:
                release = Version(text).release
            except InvalidVersion:
                continue
            out.add(text)
            for i in range(len(release)):
                out.add(".".join(map(str, [*release[:i], release[i] + 1])))
    return out


def _conflict(spec: str, needs: dict[str, list[tuple[str, SpecifierSet]]]) -> str | None:
    """Why no version ``spec`` allows can run in the serving process, when none can."""
    try:
        req = Requirement(spec)
    except InvalidRequirement:
        return None
    for who, specifier in needs.get(canonicalize_name(req.name), []):
        if not any(req.specifier.contains(v, prereleases=True) and specifier.contains(v, prereleases=True)
                   for v in _candidates(req.specifier, specifier)):
            via = "mainsail" if who == "mainsail" else f"mainsail (through {who})"
            return f"{via} needs {req.name}{specifier}"
    return None


def _import_error_text(exc: BaseException, script: Path) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    last = traceback.format_exception_only(type(cause), cause)[-1].strip()
    line: int | None = getattr(cause, "lineno", None) if isinstance(cause, SyntaxError) else None
    if line is None:
        for frame in traceback.extract_tb(cause.__traceback__):
            if Path(frame.filename).resolve() == script.resolve():
                line = frame.lineno
    where = f" ({script.name} line {line})" if line else ""
    return f"{last}{where}"


def import_user_script(script: Path, state: State) -> Any | None:
    """Import the script as the server does; an import failure is an error naming its last line."""
    try:
        module = import_script(script)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit at import time is a failure too
        sys.modules.pop(script.stem, None)
        fix = "fix the error above; the script must import without side effects that fail outside training"
        cause = exc.__cause__ or exc
        if isinstance(cause, ImportError):
            fix = container_module_hint(cause) or (
                "add the missing package to code/requirements.txt (the container pip-installs it), or install it "
                "here; run doctor with --install-requirements to install code/requirements.txt first")
        state.add("error", "script.import", f"importing {script.name} failed: {_import_error_text(exc, script)}", fix)
        return None
    state.add("ok", "script.import", f"{script.name} imports")
    return module


def near_miss_target(name: str) -> str | None:
    if name in HANDLER_NAMES:
        return None
    squashed = name.lower().strip("_").replace("_", "")
    for suffix in _SUFFIXES:
        if squashed.endswith(suffix) and squashed[: -len(suffix)] in _STEMS:
            return _STEMS[squashed[: -len(suffix)]]
    if squashed in _STEMS:
        return _STEMS[squashed]
    close = difflib.get_close_matches(name.lower(), TOOLKIT_FUNCTIONS, n=1, cutoff=0.8)
    return close[0] if close else None


def check_handler_functions(module: Any, script: Path, model_dir: Path, framework: str, state: State) -> None:
    """Names, near misses, arity, transform_fn combined with the others, and model_fn's default."""
    found = {n: getattr(module, n) for n in HANDLER_NAMES if callable(getattr(module, n, None))}
    state.add("ok", "script.functions", "defines " + (", ".join(n for n in HANDLER_NAMES if n in found) or "none of "
                                                      "the toolkit's functions (the defaults serve everything)"))
    for name in HANDLER_NAMES:
        value = getattr(module, name, None)
        if value is not None and not callable(value):
            state.add("error", "script.not_callable", f"`{name}` is a {type(value).__name__}, not a function: "
                      "the toolkit ignores it", f"define `def {SIGNATURES[name]}`")
    defined = [(n, obj) for n, obj in vars(module).items()
               if inspect.isfunction(obj) and getattr(obj, "__module__", None) == module.__name__]
    for name, _ in defined:
        target = near_miss_target(name)
        if target is None or target in found:
            continue
        if target in ("input_fn", "predict_fn", "output_fn") and "transform_fn" in found:
            continue
        if target == "transform_fn" and found.keys() & {"input_fn", "predict_fn", "output_fn"}:
            continue
        state.add("warning", "script.near_miss",
                  f"`{target}` is missing but `{name}` is defined: SageMaker ignores it and uses the default {target}",
                  f"rename `{name}` to `{target}` (signature `{SIGNATURES[target]}`)")
    for name, fn in found.items():
        try:
            bind(name, fn)
        except HandlerError as exc:
            state.add("error", "script.signature", f"{name}: {exc.message}",
                      f"define `{SIGNATURES[name]}` (optionally with a trailing `context` argument)")
    mixed = sorted(found.keys() & {"input_fn", "predict_fn", "output_fn"})
    if "transform_fn" in found and mixed:
        state.add("error", "script.transform_fn_mix",
                  f"transform_fn is defined together with {', '.join(mixed)}: the inference toolkit refuses to load "
                  "(\"Cannot use transform_fn implementation in conjunction with input_fn, predict_fn, and/or "
                  "output_fn implementation\")",
                  f"keep transform_fn alone, or remove it and keep {', '.join(mixed)}")
    if "model_fn" not in found:
        if framework in ("pytorch", "auto") and (model_dir / "model.pt").is_file():
            state.add("ok", "script.model_fn", "no model_fn: the PyTorch container's default loads the TorchScript "
                      "model.pt")
        else:
            state.add("error", "script.model_fn",
                      "no model_fn, and no framework default can load these files (only the PyTorch container has "
                      "one, and it loads a TorchScript model.pt)",
                      f"define `def {SIGNATURES['model_fn']}` returning the loaded model")


def check_stray_scripts(model_dir: Path, entry: str | None, state: State) -> None:
    """No script was found: say where a likely one sits instead."""
    name = entry or "inference.py"
    if not name.endswith(".py"):
        name += ".py"
    stray = [p for p in sorted(model_dir.rglob(name))[:5] if p.parent != model_dir / "code"]
    code = model_dir / "code"
    others = sorted(p.name for p in code.glob("*.py")) if code.is_dir() else []
    for path in stray:
        rel = path.relative_to(model_dir)
        state.add("warning", "layout.script_location",
                  f"{rel} is not where the framework containers look (code/{name}); it is ignored",
                  f"move it to code/{name} in the archive")
    if others and not stray:
        state.add("warning", "layout.entry_point",
                  f"code/ holds {', '.join(others)} but no {name}; the built-in handlers serve instead",
                  f"set SAGEMAKER_PROGRAM (or --entry-point) to the script's name, e.g. {others[0]}")

