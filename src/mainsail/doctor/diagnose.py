"""``diagnose``: every check of ``mainsail doctor`` on a model directory or ``model.tar.gz``, in order.

Each check that can run, runs, so every problem is reported at once; the imports a run makes (the
script, its helpers, ``sys.path`` entries) and its temporary directories are undone afterwards.
docs/doctor.md lists every check, its level and its fix.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from mainsail.doctor.artifacts import check_builtin
from mainsail.doctor.checks import (
    check_archive,
    check_handler_functions,
    check_layout,
    check_requirements,
    check_stray_scripts,
    import_user_script,
)
from mainsail.doctor.findings import Finding, State
from mainsail.doctor.limits import check_sample_size, check_settings
from mainsail.doctor.trial import load_and_invoke
from mainsail.errors import MainsailError
from mainsail.serve.model_dir import is_archive, prepare_model
from mainsail.serve.requirements import (
    RequirementsConflict,
    imported_elsewhere,
    prepare_requirements,
    put_first,
)
from mainsail.settings import ServeSettings


@contextmanager
def _isolated_imports(state: State) -> Iterator[None]:
    """Undo the sys.path entries and the user modules (the script, its helpers) a check imported."""
    path = list(sys.path)
    before = set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        roots = [str(r) for r in state.roots]
        for name in set(sys.modules) - before:
            origin = str(getattr(sys.modules.get(name), "__file__", None) or "")
            if origin and any(origin.startswith(root) for root in roots):
                sys.modules.pop(name, None)


def diagnose(path: str | Path, *, entry_point: str | None = None, source_dir: str | None = None,
             framework: str | None = None, sample: str | Path | None = None,
             sample_content_type: str | None = None, accept: str | None = None, serverless: bool = False,
             invoke: bool = True, install_requirements: bool = False) -> list[Finding]:
    """Every check on ``path`` (a model directory or ``model.tar.gz``); see docs/doctor.md."""
    state = State()
    try:
        with _isolated_imports(state):
            _diagnose(Path(path), state, entry_point=entry_point, source_dir=source_dir, framework=framework,
                      sample=Path(sample) if sample is not None else None, sample_content_type=sample_content_type,
                      accept=accept, serverless=serverless, invoke=invoke, install=install_requirements)
    finally:
        for directory in state.cleanup:
            shutil.rmtree(directory, ignore_errors=True)
    return state.findings


def _diagnose(path: Path, state: State, *, entry_point: str | None, source_dir: str | None,
              framework: str | None, sample: Path | None, sample_content_type: str | None, accept: str | None,
              serverless: bool, invoke: bool, install: bool) -> None:
    given = {"entry_point": entry_point, "source_dir": source_dir, "framework": framework}
    try:
        settings = ServeSettings(model_path=str(path), workers=1,
                                 **{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        state.add("error", "settings", f"invalid settings: {exc}", "fix the option or environment variable named")
        return
    check_settings(settings, state)

    body: bytes | None = None
    if sample is not None:
        try:
            body = sample.read_bytes()
        except OSError as exc:
            state.add("error", "invoke.sample", f"cannot read the sample {sample}: {exc}")
        else:
            check_sample_size(len(body), serverless, state)

    path = path.expanduser()
    if not path.exists():
        state.add("error", "model.path", f"{path} does not exist", "pass a model directory or model.tar.gz")
        return
    if is_archive(path):
        extracted = check_archive(path, state)
        if extracted is None:
            return
        model_dir = extracted
    elif path.is_dir():
        model_dir = path.resolve()
    else:
        state.add("error", "model.path", f"{path} is neither a directory nor a .tar.gz archive",
                  "pass a model directory or model.tar.gz (`tar -czf model.tar.gz -C MODEL_DIR .`)")
        return
    state.roots.append(model_dir)
    check_layout(model_dir, archive=is_archive(path), state=state)

    try:
        prepared = prepare_model(settings.model_copy(update={"model_path": str(model_dir)}))
    except MainsailError as exc:
        state.add("error", "script.entry_point", exc.message,
                  "set SAGEMAKER_PROGRAM / --entry-point to the script's file name, and SAGEMAKER_SUBMIT_DIRECTORY / "
                  "--source-dir to its folder (default: code/ in the model)")
        return
    if prepared.script is not None:
        where = prepared.script.relative_to(model_dir) if prepared.script.is_relative_to(model_dir) \
            else prepared.script
        state.add("ok", "script.entry_point", f"inference script {where}")
        state.roots.append(prepared.script.parent)
        requirements = prepared.code_dir / "requirements.txt" if prepared.code_dir else None
        if requirements is not None and requirements.is_file():
            if install:
                try:
                    overlay = prepare_requirements(requirements, settings.home / "requirements")
                except RequirementsConflict as exc:
                    state.add("error", "requirements.conflict", exc.message,
                              "relax the pin to a version mainsail runs with, or serve with "
                              "--no-install-requirements (the installed version is used)")
                except MainsailError as exc:
                    state.add("error", "requirements.install", exc.message, "fix the requirement pip names")
                else:
                    if overlay.changes:
                        state.add("ok", "requirements.install",
                                  "code/requirements.txt installed for this model (mainsail's cache), used before "
                                  "the environment's packages: " + ", ".join(c.describe() for c in overlay.changes))
                    else:
                        state.add("ok", "requirements.install", "this environment satisfies code/requirements.txt")
                    if imported := imported_elsewhere(overlay.paths):
                        state.add("warning", "requirements.imported",
                                  f"doctor has imported {', '.join(imported)} already, so its trial uses the "
                                  "installed version; mainsail serve's workers use the pinned one")
                    put_first(overlay.paths)
            else:
                check_requirements(requirements, state)
        module = import_user_script(prepared.script, state)
        if module is None:
            return
        check_handler_functions(module, prepared.script, model_dir, settings.framework, state)
        if any(f.level == "error" and f.check.startswith("script.") for f in state.findings):
            return
    else:
        check_stray_scripts(model_dir, settings.entry_point, state)
        if not check_builtin(model_dir, state):
            return
    if invoke:
        load_and_invoke(prepared, settings, state, body=body, sample=sample, content_type=sample_content_type,
                         accept=accept, serverless=serverless)
