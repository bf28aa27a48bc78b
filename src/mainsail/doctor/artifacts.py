"""The checks of a model without a script: which built-in handler serves it, and the files that handler reads.

Tabular: the model file, ``feature_columns.txt``, the risk-table and imputation pickles (through the
restricted unpickler), ``calibration/``. PyTorch: the network, ``hyperparameters.json``, an offline
tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from mainsail.doctor.findings import State, human_size
from mainsail.errors import ModelLoadError
from mainsail.features.artifacts import (
    FEATURE_COLUMNS,
    HYPERPARAMETERS,
    IMPUTE_DICT,
    RISK_TABLES,
    load_mapping_artifact,
    read_feature_columns,
    read_hyperparameters,
)
from mainsail.features.calibration import CALIBRATION_DIR, load_calibrator
from mainsail.features.tabular import RiskTable
from mainsail.features.text import resolve_tokenizer
from mainsail.handlers import build_handler
from mainsail.handlers.tabular import find_model_file


def check_builtin(model_dir: Path, state: State) -> bool:
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


# -- 4. built-in handler artifacts ------------------------------------------------------------------

def check_tabular_artifacts(model_dir: Path, state: State) -> None:
    found = find_model_file(model_dir)
    assert found is not None
    library, model_file = found
    try:
        with model_file.open("rb") as fh:
            fh.read(1)
        state.add("ok", "artifacts.model_file",
                  f"{model_file.name} ({library}, {human_size(model_file.stat().st_size)})")
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
                      "re-write calibration/ with lookup tables (mainsail.features.fitting.write_table)")
        else:
            state.add("ok", "artifacts.calibration", f"calibration: {calibrator.kind if calibrator else 'none'}")


def check_pytorch_artifacts(model_dir: Path, state: State) -> None:
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

