"""The benchmark's model: a small XGBoost classifier plus a SageMaker-style inference script."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

N_FEATURES = 20
N_TREES = 50
MAX_DEPTH = 4
SCRIPT = Path(__file__).parent / "models" / "xgb_inference.py"


@dataclass(frozen=True)
class ModelDir:
    """A model directory as ``mainsail serve`` and SageMaker expect it, plus one request body."""

    path: Path
    csv_row: bytes
    """One record: ``N_FEATURES`` numbers, comma-separated, newline-terminated."""

    @property
    def script(self) -> Path:
        return self.path / "code" / "inference.py"


def build_model_dir(path: Path, *, seed: int = 0) -> ModelDir:
    """Train the classifier on synthetic data, save it with joblib and copy the script beside it."""
    import joblib
    import numpy as np
    import xgboost

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, N_FEATURES))
    weights = rng.normal(size=N_FEATURES)
    y = (x @ weights + rng.normal(scale=0.5, size=len(x)) > 0).astype(int)
    model = xgboost.XGBClassifier(n_estimators=N_TREES, max_depth=MAX_DEPTH, n_jobs=1,
                                  random_state=seed)
    model.fit(x, y)
    path.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path / "model.joblib")
    (path / "code").mkdir(exist_ok=True)
    shutil.copyfile(SCRIPT, path / "code" / "inference.py")
    row = ",".join(f"{v:.6f}" for v in rng.normal(size=N_FEATURES)) + "\n"
    return ModelDir(path, row.encode())


def import_script(script: Path, name: str = "bench_inference") -> ModuleType:
    """Import the inference script by path, as a server would."""
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
