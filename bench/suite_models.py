"""The suite's three models, each as every system serves it, with its request bodies.

* ``tabular``: the tabular XGBoost demo with risk tables, imputation and calibration
  (``bench.tabular.build_tabular_model``), served by mainsail's built-in tabular handler;
* ``sklearn``: a scikit-learn pipeline (StandardScaler + LogisticRegression, 20 features) saved with
  joblib beside a SageMaker-style ``code/inference.py`` (``bench/models/xgb_inference.py``, which is
  generic over joblib classifiers), served by mainsail's script handler;
* ``pytorch``: the bimodal PyTorch demo (``examples/bimodal_demo.py``, as ``bench.pytorch`` builds it),
  served by mainsail's built-in PyTorch handler (``model.pth``, no ONNX).

Flask and FastAPI serve a *peer directory*: the model's files plus ``code/inference.py``. For the
built-in models that script is ``bench/models/handler_inference.py``, which calls the very handler
``mainsail serve`` picks; the sklearn model's directory already holds its script. MLServer gets a model
repository for its stock runtime (``mlserver_xgboost`` / ``mlserver_sklearn``) and V2 JSON bodies.
"""

from __future__ import annotations

import functools
import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.model import SCRIPT as JOBLIB_SCRIPT

JSON = "application/json"
CSV = "text/csv"
HANDLER_SCRIPT = Path(__file__).parent / "models" / "handler_inference.py"
MODELS = ("tabular", "sklearn", "pytorch")
N_SKLEARN_FEATURES = 20


@dataclass(frozen=True)
class MLServerModel:
    """What MLServer serves for a model: its runtime, the file it loads and the V2 bodies."""

    name: str
    implementation: str
    model_file: Path
    bodies: dict[int, bytes]
    note: str


@dataclass
class SuiteModel:
    """One model as each system serves it, with a body per records-per-request."""

    key: str
    title: str
    path: Path
    """The directory ``mainsail serve`` gets."""
    peer_path: Path
    """The directory the Flask and FastAPI peers get (its ``code/inference.py`` is the handler)."""
    content_type: str
    bodies: dict[int, bytes]
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every server of this model."""
    mlserver: MLServerModel | None = None
    mlserver_skipped: str = ""
    notes: list[str] = field(default_factory=list)


def _peer_dir(model_dir: Path, peer_dir: Path) -> Path:
    """Links to every file of ``model_dir`` plus ``code/inference.py`` wrapping the built-in handler."""
    peer_dir.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        (peer_dir / item.name).symlink_to(item.resolve())
    (peer_dir / "code").mkdir()
    shutil.copyfile(HANDLER_SCRIPT, peer_dir / "code" / "inference.py")
    return peer_dir


def v2_body(rows: Any, datatype: str) -> bytes:
    """A V2 inference request of one 2-D tensor, asking for the ``predict_proba`` output."""
    return json.dumps({
        "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": datatype,
                    "data": rows.ravel().tolist()}],
        "outputs": [{"name": "predict_proba"}],
    }).encode()


def build_tabular(tmp: Path, sizes: tuple[int, ...]) -> SuiteModel:
    import numpy as np
    import orjson
    import xgboost

    from bench.tabular import build_tabular_model
    from mainsail.handlers.tabular import TabularHandler

    model = build_tabular_model(tmp / "model")
    records = []
    for i in range(max(sizes)):  # the demo's record, its numbers nudged so that no two rows are equal
        records.append({k: (round(v + 0.01 * i, 6) if isinstance(v, float) else v) for k, v in model.record.items()})
    bodies = {n: model.json_body if n == 1 else orjson.dumps(records[:n]) for n in sizes}
    handler = TabularHandler(model.path)
    handler.load()
    # MLServer has no risk-table, imputation or calibration step: it gets the rows the handler's
    # preprocessing makes (a missing value without imputation, NaN, sent as 0: V2 JSON has no NaN).
    rows = {n: np.nan_to_num(handler.features(body, JSON)) for n, body in bodies.items()}
    with warnings.catch_warnings():  # xgboost notes that it reads a .bst name as UBJSON
        warnings.simplefilter("ignore", UserWarning)
        booster = xgboost.Booster(model_file=str(model.path / "xgboost_model.bst"))
    booster.feature_names = None  # MLServer decodes a bare tensor, without column names
    booster.set_attr(scikit_learn=json.dumps({"_estimator_type": "classifier"}))  # loads as XGBClassifier
    booster.save_model(str(tmp / "mlserver-model.json"))
    mlserver = MLServerModel(
        "tabular", "mlserver_xgboost.XGBoostModel", tmp / "mlserver-model.json",
        {n: v2_body(r, "FP32") for n, r in rows.items()},
        "MLServer's XGBoost runtime has no risk-table, imputation or calibration step, so it gets the rows "
        "mainsail's preprocessing makes (FP32 `[N, 30]`; the one missing value that has no imputation is sent "
        "as 0, since V2 JSON has no NaN, so its probability differs a little) and answers the raw "
        "`predict_proba`: less work per request than the other systems do.")
    return SuiteModel("tabular", f"Tabular XGBoost demo ({model.trees} trees, {len(model.columns)} features, "
                      "risk tables, imputation, calibration)", model.path, _peer_dir(model.path, tmp / "peer"),
                      JSON, bodies, mlserver=mlserver,
                      notes=["Requests are JSON: one record object, or a list of records."])


def build_sklearn(tmp: Path, sizes: tuple[int, ...], *, seed: int = 0) -> SuiteModel:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, N_SKLEARN_FEATURES)) * rng.uniform(0.5, 5.0, size=N_SKLEARN_FEATURES)
    y = (x @ rng.normal(size=N_SKLEARN_FEATURES) + rng.normal(scale=2.0, size=len(x)) > 0).astype(int)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    path = tmp / "model"
    (path / "code").mkdir(parents=True)
    joblib.dump(pipeline, path / "model.joblib")
    shutil.copyfile(JOBLIB_SCRIPT, path / "code" / "inference.py")
    rows = rng.normal(size=(max(sizes), N_SKLEARN_FEATURES))
    bodies = {n: "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in rows[:n]).encode() for n in sizes}
    mlserver = MLServerModel(
        "sklearn", "mlserver_sklearn.SKLearnModel", path / "model.joblib",
        {n: v2_body(rows[:n], "FP64") for n in sizes},
        "MLServer's scikit-learn runtime loads the same `model.joblib` and answers `predict_proba` on an FP64 "
        "`[N, 20]` tensor.")
    return SuiteModel("sklearn", "scikit-learn script model (StandardScaler + LogisticRegression, 20 features, "
                      "`code/inference.py`)", path, path, CSV, bodies, mlserver=mlserver,
                      notes=["Requests are CSV, one line per record; `input_fn` parses them with `np.genfromtxt`."])


def build_pytorch(tmp: Path, sizes: tuple[int, ...], *, size: str = "tiny") -> SuiteModel:
    import orjson

    from bench import pytorch

    demo = pytorch._demo()
    path = demo.build_bimodal_model(tmp / "model", size=size, seed=0)
    records = demo.sample_records(max(sizes), seed=123)
    bodies = {n: orjson.dumps(records[0]) if n == 1 else orjson.dumps(records[:n]) for n in sizes}
    env = {"MAINSAIL_USE_ONNX": "false", "MAINSAIL_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    return SuiteModel("pytorch", f"PyTorch bimodal demo ({size}: {pytorch.SIZE_NOTES[size]})", path,
                      _peer_dir(path, tmp / "peer"), JSON, bodies, env=env,
                      mlserver_skipped="MLServer ships no runtime for this model (a BERT text encoder plus tabular "
                      "fields behind mainsail's text pipeline), and its virtualenv holds no torch by design (MLServer "
                      "must not pull a torch of its own), so a custom MLModel could not load the network there",
                      notes=["Requests are JSON: one record object, or a list of records; the network is "
                             "`model.pth` on CPU."])


BUILDERS: dict[str, Callable[..., SuiteModel]] = {
    "tabular": build_tabular, "sklearn": build_sklearn, "pytorch": build_pytorch}


def floor_calls(model: SuiteModel) -> dict[int, Callable[[], object]]:
    """The handler ``mainsail serve`` runs for ``model``, loaded here, called directly on each body."""
    from mainsail.handlers import build_handler
    from mainsail.handlers.base import Invocation

    script = model.path / "code" / "inference.py"
    handler = build_handler(model.path, script if script.is_file() else None)
    handler.load()
    calls: dict[int, Callable[[], object]] = {}
    for records, body in model.bodies.items():
        invocation = Invocation(body, model.content_type, JSON)
        handler.invoke(invocation)  # a broken body fails here, not in the timing loop
        calls[records] = functools.partial(handler.invoke, invocation)
    return calls
