"""``mainsail doctor MODEL``: check a model directory or ``model.tar.gz`` before it is deployed.

Every check is a small function that appends ``Finding`` objects; ``diagnose`` runs them all (each
check that can run, runs, so every problem is reported at once) and returns the list. The model is
seen the way ``mainsail serve`` (and the SageMaker framework containers) see it: the archive is
extracted with the server's safe extraction, the script is found with the server's lookup, handler
functions are resolved and bound with the script handler's rules, the model is loaded by the real
handler in a ``ModelRuntime`` and a sample is sent through the serving app's ``POST /invocations``.
docs/doctor.md lists every check, its level and its fix.
"""

from __future__ import annotations

import difflib
import inspect
import json
import mimetypes
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Level = Literal["error", "warning", "ok"]

MB = 1024 * 1024
REALTIME_PAYLOAD_LIMIT = 6 * MB
SERVERLESS_PAYLOAD_LIMIT = 4 * MB
RESPONSE_LIMIT = 6 * MB
INVOCATION_TIMEOUT_S = 60.0
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
_CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv", ".jsonl": "application/jsonlines",
                  ".jsonlines": "application/jsonlines", ".npy": "application/x-npy",
                  ".parquet": "application/x-parquet", ".txt": "text/plain"}


@dataclass(frozen=True)
class Finding:
    """One result: ``error`` (the model will not deploy or serve correctly), ``warning``, or ``ok``."""

    level: Level
    check: str
    message: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    findings: list[Finding] = field(default_factory=list)
    cleanup: list[Path] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)

    def add(self, level: Level, check: str, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(level, check, message, fix))


def _size(n: int | float) -> str:
    if n < 1024:
        return f"{n:g} bytes"
    if n < MB:
        return f"{n / 1024:.1f} KB"
    return f"{n / MB:.2f} MB" if n < 1024**3 else f"{n / 1024**3:.2f} GB"


# -- 1. archive and layout --------------------------------------------------------------------------

def check_archive(archive: Path, state: _State) -> Path | None:
    """Readable, safe, and its size; returns the directory it was extracted into (None on failure)."""
    from mainsail.errors import InvalidModelArchive
    from mainsail.serve.model_dir import safe_extract

    size = archive.stat().st_size
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        state.add("error", "archive.readable", f"{archive.name} is not a readable tar archive: {exc}",
                  "build it with `tar -czf model.tar.gz -C MODEL_DIR .`")
        return None
    extracted = sum(max(m.size, 0) for m in members)
    state.add("ok", "archive.readable", f"{archive.name}: {len(members)} members, {_size(size)} compressed, "
              f"{_size(extracted)} extracted")
    if size > ARCHIVE_SIZE_WARNING or extracted > EXTRACTED_SIZE_WARNING:
        state.add("warning", "archive.size",
                  f"{archive.name} is {_size(size)} ({_size(extracted)} extracted): downloads and extraction this "
                  "large slow every instance start and may exceed the endpoint's storage volume (30 GB by default)",
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


def check_layout(model_dir: Path, *, archive: bool, state: _State) -> None:
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

def check_requirements(requirements: Path, state: _State) -> None:
    """Each line of ``code/requirements.txt`` against the current environment."""
    from packaging.requirements import InvalidRequirement, Requirement

    from mainsail.serve.requirements import missing_requirements

    try:
        missing = missing_requirements(requirements)
    except OSError as exc:
        state.add("error", "requirements.readable", f"cannot read {requirements}: {exc}")
        return
    if not missing:
        state.add("ok", "requirements", f"every line of code/{requirements.name} is satisfied by this environment")
        return
    for entry in missing:
        if "(installed:" in entry:
            spec, _, installed = entry.partition(" (installed: ")
            installed = installed.rstrip(")")
            try:
                name = Requirement(spec).name
            except InvalidRequirement:
                name = spec
            state.add("warning", "requirements.version",
                      f"code/requirements.txt asks for {spec} but {installed} is installed: the SageMaker container "
                      f"pip-installs {spec}, mainsail serve keeps the installed {installed}",
                      f"pin the version you test with (`{name}=={installed}`) or `pip install '{spec}'` here")
        else:
            state.add("warning", "requirements.missing",
                      f"code/requirements.txt needs {entry}, which is not installed here",
                      f"`mainsail serve` installs it at start (--install-requirements, the default), or "
                      f"`pip install '{entry}'`; `mainsail doctor --install-requirements` does the same before the "
                      "import check")


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


def import_user_script(script: Path, state: _State) -> Any | None:
    """Import the script as the server does; an import failure is an error naming its last line."""
    from mainsail.handlers.script import import_script

    try:
        module = import_script(script)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit at import time is a failure too
        sys.modules.pop(script.stem, None)
        fix = "fix the error above; the script must import without side effects that fail outside training"
        if isinstance(exc.__cause__ or exc, ImportError):
            fix = ("add the missing package to code/requirements.txt (the container pip-installs it), or install it "
                   "here; run doctor with --install-requirements to install code/requirements.txt first")
        state.add("error", "script.import", f"importing {script.name} failed: {_import_error_text(exc, script)}", fix)
        return None
    state.add("ok", "script.import", f"{script.name} imports")
    return module


def _near_miss_target(name: str) -> str | None:
    from mainsail.handlers.script import HANDLER_NAMES

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


def check_handler_functions(module: Any, script: Path, model_dir: Path, framework: str, state: _State) -> None:
    """Names, near misses, arity, transform_fn combined with the others, and model_fn's default."""
    from mainsail.errors import HandlerError
    from mainsail.handlers.script import HANDLER_NAMES, bind

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
        target = _near_miss_target(name)
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


def check_stray_scripts(model_dir: Path, entry: str | None, state: _State) -> None:
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


# -- 4. built-in handler artifacts ------------------------------------------------------------------

def check_tabular_artifacts(model_dir: Path, state: _State) -> None:
    from mainsail.errors import ModelLoadError
    from mainsail.features.artifacts import (
        FEATURE_COLUMNS,
        IMPUTE_DICT,
        RISK_TABLES,
        load_mapping_artifact,
        read_feature_columns,
    )
    from mainsail.features.calibration import CALIBRATION_DIR, load_calibrator
    from mainsail.features.tabular import RiskTable
    from mainsail.handlers.tabular import find_model_file

    found = find_model_file(model_dir)
    assert found is not None
    library, model_file = found
    try:
        with model_file.open("rb") as fh:
            fh.read(1)
        state.add("ok", "artifacts.model_file", f"{model_file.name} ({library}, {_size(model_file.stat().st_size)})")
    except OSError as exc:
        state.add("error", "artifacts.model_file", f"cannot read {model_file.name}: {exc}", "fix its permissions")
    columns: list[str] | None = None
    columns_file = model_dir / FEATURE_COLUMNS
    if columns_file.is_file():
        try:
            columns = read_feature_columns(columns_file)
            state.add("ok", "artifacts.feature_columns", f"{FEATURE_COLUMNS}: {len(columns)} columns")
        except (ModelLoadError, OSError, UnicodeDecodeError) as exc:
            state.add("error", "artifacts.feature_columns", f"{FEATURE_COLUMNS}: {getattr(exc, 'message', exc)}",
                      "write `<index>,<name>` lines in training order (mainsail.package does)")
    else:
        state.add("error" if library == "xgboost" else "warning", "artifacts.feature_columns",
                  f"{FEATURE_COLUMNS} is missing: CSV columns have no names and the reference handler refuses to "
                  "load; mainsail serves only if the model file names its features",
                  "write feature_columns.txt (`<index>,<name>` lines in training order; mainsail.package writes it)")
    for filename, what in ((RISK_TABLES, "table"), (IMPUTE_DICT, "value")):
        path = model_dir / filename
        if not path.exists():
            if library == "xgboost":
                state.add("warning", "artifacts." + path.stem,
                          f"{filename} is missing: mainsail serves without it, the reference XGBoost handler refuses "
                          "to load", f"write {filename} (an empty dict if nothing to map; mainsail.package does)")
            continue
        try:
            data = load_mapping_artifact(path, what)
        except ModelLoadError as exc:
            state.add("error", "artifacts." + path.stem,
                      f"{exc.message} (the restricted unpickler refused it; nothing in it was run)",
                      "re-save it as plain data: a dict of str -> dict/float built from builtins and numpy only")
            continue
        assert data is not None
        problems: list[str] = []
        if filename == RISK_TABLES:
            for column, table in data.items():
                try:
                    RiskTable.from_artifact(column, table)
                except ModelLoadError as exc:
                    problems.append(exc.message)
        if problems:
            state.add("error", "artifacts." + path.stem, "; ".join(problems[:5]),
                      "each table must be {'bins': {category: float}, 'default_bin': float}")
            continue
        unknown = sorted(set(data) - set(columns)) if columns else []
        if unknown:
            state.add("warning", "artifacts." + path.stem,
                      f"{filename} has entries for columns that are not features (ignored): {', '.join(unknown[:10])}",
                      "drop them, or add the columns to feature_columns.txt if the model was trained on them")
        else:
            state.add("ok", "artifacts." + path.stem, f"{filename}: {len(data)} columns, plain data")
    if (model_dir / CALIBRATION_DIR).exists():
        try:
            calibrator = load_calibrator(model_dir)
        except ModelLoadError as exc:
            state.add("error", "artifacts.calibration",
                      f"{exc.message}: the handler would serve raw scores as the calibrated ones",
                      "re-write calibration/ with lookup tables (mainsail.features.calibration.write_table)")
        else:
            state.add("ok", "artifacts.calibration", f"calibration: {calibrator.kind if calibrator else 'none'}")


def check_pytorch_artifacts(model_dir: Path, state: _State) -> None:
    from mainsail.errors import ModelLoadError
    from mainsail.features.artifacts import HYPERPARAMETERS, read_hyperparameters

    has_pth, has_onnx = (model_dir / "model.pth").is_file(), (model_dir / "model.onnx").is_file()
    state.add("ok", "artifacts.network", "network: " + " and ".join(
        n for n, present in (("model.onnx (preferred)", has_onnx), ("model.pth", has_pth)) if present))
    path = model_dir / HYPERPARAMETERS
    if not path.is_file():
        state.add("error", "artifacts.hyperparameters", f"{HYPERPARAMETERS} is missing: the text pipelines are "
                  "rebuilt from it", "copy the training job's hyperparameters.json into the model directory")
        return
    try:
        params = read_hyperparameters(path)
    except ModelLoadError as exc:
        state.add("error", "artifacts.hyperparameters", exc.message, "write it as a JSON object")
        return
    state.add("ok", "artifacts.hyperparameters", f"{HYPERPARAMETERS}: model_class {params.get('model_class')!r}")
    try:
        from mainsail.features.text import resolve_tokenizer

        resolve_tokenizer(str(params.get("tokenizer") or ""), model_dir)
    except ImportError as exc:
        state.add("error", "artifacts.tokenizer", f"transformers is not installed: {exc}",
                  "pip install 'mainsail[pytorch]'")
    except ModelLoadError as exc:
        state.add("error", "artifacts.tokenizer", exc.message + " (the handler never downloads)",
                  "ship the tokenizer folder inside the model directory under the name hyperparameters.json gives, "
                  "or pre-fill the Hugging Face cache")
    else:
        state.add("ok", "artifacts.tokenizer", f"tokenizer {params.get('tokenizer')!r} loads offline")


# -- 5 and 6. load, trial invocation, limits --------------------------------------------------------

def check_settings(settings: Any, state: _State) -> None:
    if settings.timeout > INVOCATION_TIMEOUT_S:
        state.add("warning", "limits.timeout",
                  f"SAGEMAKER_MODEL_SERVER_TIMEOUT is {settings.timeout:g} s, but a SageMaker real-time invocation "
                  f"times out after {INVOCATION_TIMEOUT_S:g} s whatever the model server allows",
                  "keep the model under 60 s per request, or use asynchronous inference / batch transform")
    if settings.max_payload_mb > 6:
        state.add("warning", "limits.payload_setting",
                  f"SAGEMAKER_MAX_PAYLOAD_IN_MB is {settings.max_payload_mb:g}, but SageMaker's front end refuses "
                  "real-time requests over 6 MB before they reach the container",
                  "send larger inputs by reference (S3) or use asynchronous inference")


def _sample_columns(handler: Any) -> dict[str, Any] | None:
    """A one-record JSON sample for a built-in handler that knows its columns."""
    pre = getattr(handler, "preprocessor", None) or getattr(handler, "tabular", None)
    columns = getattr(handler, "feature_columns", None) or getattr(pre, "feature_columns", None)
    if not columns:
        return None
    tables = getattr(pre, "risk_tables", {}) or {}
    record: dict[str, Any] = {}
    for name in columns:
        table = tables.get(name)
        record[name] = next(iter(table.bins), "unseen") if table is not None and table.bins else 0.0
    for text in getattr(handler, "pipelines", None) or {}:
        record[text] = "[bom] hello, how can I help? [eom][bom] my order did not arrive [eom]"
    return record


def generated_sample(handler: Any) -> tuple[bytes, str] | None:
    record = _sample_columns(handler)
    if record is not None:
        return json.dumps(record).encode(), "application/json"
    booster = getattr(handler, "booster", None)
    if booster is not None and handler.name == "xgboost-algorithm":
        return ",".join(["0"] * int(booster.num_features())).encode(), "text/csv"
    return None


def check_sample_size(size: int, serverless: bool, state: _State) -> None:
    limit = SERVERLESS_PAYLOAD_LIMIT if serverless else REALTIME_PAYLOAD_LIMIT
    kind = "serverless" if serverless else "real-time"
    if size > limit:
        state.add("error", "limits.request_size",
                  f"the sample is {_size(size)}, over SageMaker's {limit // MB} MB {kind} request limit "
                  "(InvokeEndpoint refuses it with a 413 before the model sees it)",
                  "send smaller batches, or pass large inputs by reference (S3 URI) / use asynchronous inference")
    else:
        state.add("ok", "limits.request_size", f"sample {_size(size)} is within the {limit // MB} MB {kind} limit")


def trial_invocation(runtime: Any, settings: Any, body: bytes, content_type: str, accept: str | None,
                     state: _State, *, serverless: bool = False) -> None:
    """POST the sample to the serving app's /invocations, in process, and judge the reply."""
    from starlette.testclient import TestClient

    from mainsail.serve.app import create_app

    app = create_app(runtime, settings, load_on_startup=False)
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    with TestClient(app, raise_server_exceptions=False) as client:
        started = time.perf_counter()
        response = client.post("/invocations", content=body, headers=headers)
        latency = time.perf_counter() - started
    head = response.content[:120].decode("utf-8", errors="replace")
    if len(response.content) > 120:
        head += "..."
    summary = (f"HTTP {response.status_code} in {latency * 1000:.0f} ms, {len(response.content)} bytes of "
               f"{response.headers.get('content-type', '?')}: {head}")
    if response.status_code >= 400:
        message = head
        try:
            payload = response.json()
            message = f"{payload.get('error')}: {payload.get('message')}"
        except ValueError:
            pass
        fix = ("the model raised while answering the sample: fix the code the message points at"
               if response.status_code >= 500 else
               "the request was refused: check --sample-content-type and the sample's columns/format")
        if response.status_code == 504:
            fix = "the model is slower than the timeout: make it faster or send smaller batches"
        state.add("error", "invoke.status", f"HTTP {response.status_code} in {latency * 1000:.0f} ms: {message}", fix)
    else:
        state.add("ok", "invoke.status", summary)
    if latency > INVOCATION_TIMEOUT_S:
        state.add("error", "limits.latency",
                  f"the invocation took {latency:.1f} s; SageMaker real-time invocations time out after 60 s",
                  "make the model faster, send smaller batches, or use asynchronous inference")
    limit, kind = (SERVERLESS_PAYLOAD_LIMIT, "serverless") if serverless else (RESPONSE_LIMIT, "real-time")
    if len(response.content) > limit:
        state.add("error", "limits.response_size",
                  f"the response is {_size(len(response.content))}, over SageMaker's {limit // MB} MB {kind} "
                  "response limit", "return fewer fields or smaller batches")


@contextmanager
def _isolated_imports(state: _State) -> Iterator[None]:
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
    state = _State()
    try:
        with _isolated_imports(state):
            _diagnose(Path(path), state, entry_point=entry_point, source_dir=source_dir, framework=framework,
                      sample=Path(sample) if sample is not None else None, sample_content_type=sample_content_type,
                      accept=accept, serverless=serverless, invoke=invoke, install=install_requirements)
    finally:
        for directory in state.cleanup:
            shutil.rmtree(directory, ignore_errors=True)
    return state.findings


def _diagnose(path: Path, state: _State, *, entry_point: str | None, source_dir: str | None,
              framework: str | None, sample: Path | None, sample_content_type: str | None, accept: str | None,
              serverless: bool, invoke: bool, install: bool) -> None:
    from pydantic import ValidationError

    from mainsail.errors import MainsailError
    from mainsail.serve.model_dir import is_archive, prepare_model
    from mainsail.settings import ServeSettings

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
                from mainsail.serve.requirements import install_requirements

                try:
                    sys.path.append(str(install_requirements(requirements, settings.home / "requirements")))
                    state.add("ok", "requirements.install", "code/requirements.txt installed (mainsail's cache)")
                except MainsailError as exc:
                    state.add("error", "requirements.install", exc.message, "fix the requirement pip names")
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
        if not _check_builtin(model_dir, state):
            return
    if invoke:
        _load_and_invoke(prepared, settings, state, body=body, sample=sample, content_type=sample_content_type,
                         accept=accept, serverless=serverless)


def _check_builtin(model_dir: Path, state: _State) -> bool:
    from mainsail.errors import ModelLoadError
    from mainsail.handlers import build_handler

    try:
        handler = build_handler(model_dir, None)
    except ModelLoadError as exc:
        state.add("error", "handler", exc.message,
                  "add code/inference.py (model_fn, and input_fn/predict_fn/output_fn as needed), or the files a "
                  "built-in handler serves (docs/tabular.md, docs/pytorch.md)")
        return False
    state.add("ok", "handler", f"no inference script: the built-in {handler.name} handler serves this model")
    if handler.name == "tabular":
        check_tabular_artifacts(model_dir, state)
    elif handler.name.startswith("pytorch"):
        check_pytorch_artifacts(model_dir, state)
    return True


def _load_and_invoke(prepared: Any, settings: Any, state: _State, *, body: bytes | None, sample: Path | None,
                     content_type: str | None, accept: str | None, serverless: bool) -> None:
    from mainsail.errors import ModelLoadError
    from mainsail.handlers import build_handler
    from mainsail.serve.runtime import ModelRuntime

    try:
        handler = build_handler(prepared.model_dir, prepared.script, framework=settings.framework,
                                model_name=settings.model_name, settings=settings)
    except ModelLoadError as exc:
        state.add("error", "load", exc.message)
        return
    runtime = ModelRuntime(handler, timeout_s=max(settings.timeout, INVOCATION_TIMEOUT_S) + 1, threads=1)
    started = time.perf_counter()
    try:
        runtime.load()
    except ModelLoadError as exc:
        state.add("error", "load", f"the {handler.name} handler failed to load the model: {exc.message}",
                  "fix the cause above (this is what the container would log before /ping stays unhealthy)")
        runtime.close()
        return
    state.add("ok", "load", f"loaded by the {handler.name} handler in {time.perf_counter() - started:.2f} s")
    try:
        if sample is not None and body is None:
            return
        if body is None:
            generated = generated_sample(handler)
            if generated is None:
                state.add("warning", "invoke.sample", "no trial invocation: no sample given and the handler cannot "
                          "make one up", "pass --sample FILE (and --sample-content-type) to try a request")
                return
            body, guessed = generated
            content_type = content_type or guessed
            state.add("ok", "invoke.sample", f"generated sample ({guessed}): {body[:100].decode(errors='replace')}")
            check_sample_size(len(body), serverless, state)
        elif content_type is None:
            assert sample is not None
            content_type = _CONTENT_TYPES.get(sample.suffix.lower()) or mimetypes.guess_type(sample.name)[0] \
                or "application/octet-stream"
        limit_mb = max(settings.max_payload_mb, len(body) / MB + 1)
        trial_settings = settings.model_copy(update={"max_payload_mb": limit_mb})
        trial_invocation(runtime, trial_settings, body, content_type, accept, state, serverless=serverless)
    finally:
        runtime.close()


# -- report -----------------------------------------------------------------------------------------

def exit_code(findings: list[Finding], *, strict: bool = False) -> int:
    if any(f.level == "error" for f in findings):
        return 1
    if strict and any(f.level == "warning" for f in findings):
        return 1
    return 0


def to_json(path: str, findings: list[Finding], *, strict: bool = False) -> str:
    return json.dumps({
        "model": path,
        "ok": exit_code(findings, strict=strict) == 0,
        "errors": sum(f.level == "error" for f in findings),
        "warnings": sum(f.level == "warning" for f in findings),
        "findings": [f.to_dict() for f in findings],
    }, indent=2)


def render(path: str, findings: list[Finding], console: Any) -> None:
    """The findings as a table of ✓ / ! / ✗ lines, each problem with its fix under it."""
    from rich.table import Table
    from rich.text import Text

    marks = {"ok": ("✓", "green"), "warning": ("!", "yellow"), "error": ("✗", "red")}
    table = Table(title=f"mainsail doctor {path}", title_justify="left", show_header=False, box=None,
                  padding=(0, 1))
    table.add_column(width=1)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for finding in findings:
        mark, colour = marks[finding.level]
        text = Text(finding.message)
        if finding.fix and finding.level != "ok":
            text.append("\nfix: ", style="cyan").append(finding.fix)
        table.add_row(Text(mark, style=colour), finding.check, text)
    console.print(table)
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    colour = "red" if errors else "yellow" if warnings else "green"
    console.print(Text(f"{errors} error(s), {warnings} warning(s)", style=colour))
