"""Scripts that leave predict_fn to the framework default batch without asking (issue 14 item 3).

The property: a batch answered with the requests' rows stacked into one call of the default
predict_fn is, request by request, byte for byte what each request gets alone. The property tests
switch the stacker's own check off (``verify_limit = 0``) so what they compare is the stacked answer
itself; the other tests keep the check on and show what it catches.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mainsail.errors import MainsailError
from mainsail.handlers.base import Invocation, Reply
from mainsail.handlers.script import ScriptHandler
from tests.conftest import write_script
from tests.serve.test_batching import batch_size_metric, post, serve_script, wait_for
from tests.serve.test_batching import outcomes_alone as alone

# The PyTorch container's default model_fn loads a TorchScript model.pt; torch deprecates the format.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

FEATURES = 4
rng = np.random.default_rng(7)
TRAIN_X = rng.normal(size=(300, FEATURES))
TRAIN_Y = TRAIN_X[:, 0] * 2 - TRAIN_X[:, 1] + np.sin(TRAIN_X[:, 2])


def loaded(model_dir: Path, source: str) -> ScriptHandler:
    handler = ScriptHandler(write_script(model_dir, source), model_dir)
    handler.load()
    assert handler.batchable
    return handler


@pytest.fixture(scope="module")
def xgboost_default(tmp_path_factory: pytest.TempPathFactory) -> ScriptHandler:
    """The XGBoost container's defaults all the way (input_fn, predict_fn, output_fn)."""
    import xgboost

    model_dir = tmp_path_factory.mktemp("xgb-default")
    booster = xgboost.train({"max_depth": 3, "eta": 0.3}, xgboost.DMatrix(TRAIN_X, label=TRAIN_Y), 12)
    booster.save_model(model_dir / "model.json")
    return loaded(model_dir, "import os\nimport xgboost\n\n\ndef model_fn(model_dir):\n"
                             "    booster = xgboost.Booster()\n"
                             "    booster.load_model(os.path.join(model_dir, 'model.json'))\n"
                             "    return booster\n")


@pytest.fixture(scope="module")
def sklearn_default(tmp_path_factory: pytest.TempPathFactory) -> ScriptHandler:
    """A random forest saved with joblib; the scikit-learn container's input/predict/output."""
    import joblib
    from sklearn.ensemble import RandomForestRegressor

    model_dir = tmp_path_factory.mktemp("sklearn-default")
    joblib.dump(RandomForestRegressor(n_estimators=8, max_depth=5, random_state=0).fit(TRAIN_X, TRAIN_Y),
                model_dir / "model.joblib")
    return loaded(model_dir, "import os\nimport joblib\n\n\ndef model_fn(model_dir):\n"
                             "    return joblib.load(os.path.join(model_dir, 'model.joblib'))\n")


DATAFRAME_SCRIPT = '''
import io
import json
import os

import joblib
import pandas as pd

COLUMNS = ["a", "b", "c", "d"]


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "pipeline.joblib"))


def input_fn(body, content_type):
    if content_type == "text/csv":
        return pd.read_csv(io.StringIO(body), header=None, names=COLUMNS, dtype="float64")
    if content_type == "application/json":
        rows = json.loads(body)
        return pd.DataFrame(rows if isinstance(rows[0], list) else [rows], columns=COLUMNS, dtype="float64")
    raise ValueError(f"cannot read {content_type}")


def output_fn(prediction, accept):
    return json.dumps({"scores": [round(float(p), 12) for p in prediction]}), "application/json"
'''


@pytest.fixture(scope="module")
def sklearn_dataframes(tmp_path_factory: pytest.TempPathFactory) -> ScriptHandler:
    """A scikit-learn pipeline over named columns: the script's input_fn reads DataFrames."""
    import joblib
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeRegressor

    model_dir = tmp_path_factory.mktemp("sklearn-frames")
    frame = pd.DataFrame(TRAIN_X, columns=["a", "b", "c", "d"])
    pipeline = Pipeline([("scale", ColumnTransformer([("num", StandardScaler(), ["a", "b"])],
                                                     remainder="passthrough")),
                         ("tree", DecisionTreeRegressor(max_depth=6, random_state=0))]).fit(frame, TRAIN_Y)
    joblib.dump(pipeline, model_dir / "pipeline.joblib")
    return loaded(model_dir, DATAFRAME_SCRIPT)


@pytest.fixture(scope="module")
def torch_default(tmp_path_factory: pytest.TempPathFactory) -> ScriptHandler:
    """A TorchScript model.pt and a script that defines nothing: the PyTorch container's defaults
    (its default model_fn loads model.pt). The model works row by row, elementwise."""
    import torch

    class Squash(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x * 0.5) + x.abs()

    model_dir = tmp_path_factory.mktemp("torch-default")
    torch.jit.save(torch.jit.script(Squash()), str(model_dir / "model.pt"))
    return loaded(model_dir, "# every function left to the PyTorch container's defaults\n")


HANDLERS = ["xgboost_default", "sklearn_default", "sklearn_dataframes", "torch_default"]

value = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def request(draw: st.DrawFn) -> Invocation:
    """One request of 1-4 rows, as CSV or JSON, answered as JSON or CSV; now and then a bad one."""
    width = FEATURES if draw(st.integers(0, 9)) else draw(st.sampled_from([FEATURES - 1, FEATURES + 1]))
    rows = draw(st.lists(st.lists(value, min_size=width, max_size=width), min_size=1, max_size=4))
    content_type = draw(st.sampled_from(["text/csv", "application/json"]))
    if content_type == "text/csv":
        body = "\n".join(",".join(repr(v) for v in row) for row in rows)
    else:
        body = json.dumps(rows if len(rows) > 1 or draw(st.booleans()) else rows[0])
    return Invocation(body.encode(), content_type, draw(st.sampled_from(["application/json", "text/csv"])))


def assert_byte_equal(got: list[Reply | MainsailError], want: list[Reply | MainsailError]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, MainsailError):
            assert isinstance(g, MainsailError), (g, w)
            assert (type(g), g.status_code, g.message) == (type(w), w.status_code, w.message)
        else:
            assert isinstance(g, Reply), (g, w)
            assert (g.status, g.content_type, g.headers, g.body) == (w.status, w.content_type, w.headers, w.body)


@pytest.mark.parametrize("name", HANDLERS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invocations=st.lists(request(), min_size=2, max_size=8))
def test_stacked_rows_answer_each_request_byte_for_byte_as_alone(
        name: str, invocations: list[Invocation], request_handler: Any) -> None:
    handler = request_handler(name)
    stacker = handler._stacker
    assert stacker is not None
    stacker.verify_limit = 0  # compare the stacked answers themselves, unchecked
    assert_byte_equal(handler.invoke_batch(invocations), alone(handler, invocations))
    assert stacker.enabled


@pytest.fixture
def request_handler(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue


def csv_rows(rows: np.ndarray) -> Invocation:
    return Invocation("\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode(), "text/csv",
                      "application/json")


@pytest.mark.parametrize("name", HANDLERS)
def test_requests_of_one_kind_share_one_stacked_call(name: str, request: pytest.FixtureRequest) -> None:
    handler: ScriptHandler = request.getfixturevalue(name)
    stacker = handler._stacker
    assert stacker is not None
    stacker.verify_limit = 64
    stacker.verified.clear()
    data = np.random.default_rng(3).normal(size=(9, FEATURES))
    invocations = [csv_rows(data[0:2]), csv_rows(data[2:5]), csv_rows(data[5:7]), csv_rows(data[7:9])]
    assert_byte_equal(handler.invoke_batch(invocations), alone(handler, invocations))
    # One call over the 9 rows, checked against the answers alone once and trusted from then on.
    assert stacker.enabled and stacker.verified == {9}


MIXING_SCRIPT = '''
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


class Centred(RegressorMixin, BaseEstimator):
    """Answers each row relative to the mean of the rows it is given: it mixes rows."""

    def fit(self, X, y=None):
        return self

    def predict(self, X):
        return (X - X.mean(axis=0)).sum(axis=1)


class Total(RegressorMixin, BaseEstimator):
    """Answers one number for all the rows it is given: not one answer per row."""

    def fit(self, X, y=None):
        return self

    def predict(self, X):
        return float(X.sum())


class Pairs(RegressorMixin, BaseEstimator):
    """Takes at most two rows a call."""

    def fit(self, X, y=None):
        return self

    def predict(self, X):
        if len(X) > 2:
            raise ValueError(f"{len(X)} rows: two at most")
        return X.sum(axis=1)


def model_fn(model_dir):
    return {"centred": Centred, "total": Total, "pairs": Pairs}[Path(model_dir, "kind").read_text()]()
'''


@pytest.mark.parametrize("kind, reason", [("centred", "answered differently"), ("total", "a float"),
                                          ("pairs", "failed where each request alone succeeded")])
def test_a_model_that_does_not_answer_row_by_row_stops_stacking(
        tmp_path: Path, kind: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "kind").write_text(kind)
    handler = loaded(tmp_path, MIXING_SCRIPT)
    stacker = handler._stacker
    assert stacker is not None
    data = np.arange(12, dtype=float).reshape(6, 2)
    invocations = [csv_rows(data[i:i + 2]) for i in (0, 2, 4)]
    with caplog.at_level(logging.WARNING, logger="mainsail.handlers.stacking"):
        first = handler.invoke_batch(invocations)
    assert_byte_equal(first, alone(handler, invocations))
    assert not stacker.enabled
    assert reason in caplog.text and "each request is answered alone" in caplog.text
    assert_byte_equal(handler.invoke_batch(invocations), alone(handler, invocations))


def test_a_linear_torch_model_answers_as_alone_whatever_its_kernels_do(tmp_path: Path) -> None:
    """A matrix product over more rows may round differently (it does on this project's CPUs):
    the check answers each request as alone, and stacking stops when they differ."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    torch.jit.save(torch.jit.script(model.eval()), str(tmp_path / "model.pt"))
    handler = loaded(tmp_path, "")
    data = np.random.default_rng(5).normal(size=(30, FEATURES))
    for start in range(0, 30, 6):
        invocations = [csv_rows(data[i:i + 1]) for i in range(start, start + 6)]
        assert_byte_equal(handler.invoke_batch(invocations), alone(handler, invocations))


def test_what_does_not_stack_is_predicted_alone_in_the_batch(tmp_path: Path) -> None:
    """The script's input_fn builds its own DMatrix: nothing to stack, each predicted alone."""
    import xgboost

    booster = xgboost.train({"max_depth": 2}, xgboost.DMatrix(TRAIN_X, label=TRAIN_Y), 5)
    booster.save_model(tmp_path / "model.json")
    handler = loaded(tmp_path, "import os\nimport numpy as np\nimport xgboost\n\n\n"
                               "def model_fn(model_dir):\n    booster = xgboost.Booster()\n"
                               "    booster.load_model(os.path.join(model_dir, 'model.json'))\n    return booster\n\n\n"
                               "def input_fn(body, content_type):\n"
                               "    return xgboost.DMatrix(np.atleast_2d(np.loadtxt(body.splitlines(), delimiter=',')))\n")
    data = np.random.default_rng(1).normal(size=(4, FEATURES))
    invocations = [csv_rows(data[i:i + 1]) for i in range(4)]
    assert_byte_equal(handler.invoke_batch(invocations), alone(handler, invocations))
    assert handler._stacker is not None and handler._stacker.verified == set()


def test_a_script_with_its_own_predict_fn_does_not_batch(tmp_path: Path) -> None:
    import joblib
    from sklearn.tree import DecisionTreeRegressor

    joblib.dump(DecisionTreeRegressor(max_depth=2).fit(TRAIN_X, TRAIN_Y), tmp_path / "model.joblib")
    script = write_script(tmp_path, "import os\nimport joblib\n\n\ndef model_fn(model_dir):\n"
                                    "    return joblib.load(os.path.join(model_dir, 'model.joblib'))\n\n\n"
                                    "def predict_fn(data, model):\n    return model.predict(data)\n")
    handler = ScriptHandler(script, tmp_path)
    handler.load()
    assert not handler.batchable


GATED_FOREST = '''
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestRegressor

MODEL_DIR = None


class CountedForest(RandomForestRegressor):
    """A real forest that notes the rows of each predict call, and holds a call whose first
    feature is -1 until the gate file exists."""

    def predict(self, X):
        with open(MODEL_DIR / "calls.txt", "a") as f:
            f.write(f"{len(X)}\\n")
        if X[0][0] == -1:
            deadline = time.monotonic() + 30
            while not (MODEL_DIR / "gate").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().predict(X)


def model_fn(model_dir):
    global MODEL_DIR
    MODEL_DIR = Path(model_dir)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    return CountedForest(n_estimators=5, random_state=0).fit(X, X[:, 0] - X[:, 3])
'''


@pytest.fixture
def gated_forest(tmp_path: Path) -> Iterator[Path]:
    write_script(tmp_path, GATED_FOREST)
    yield tmp_path


def calls(model_dir: Path) -> list[int]:
    path = model_dir / "calls.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_over_http_queued_requests_share_one_call_of_the_default_predict_fn(gated_forest: Path) -> None:
    bodies = ["0.1,0.2,0.3,0.4\n0.5,0.6,0.7,0.8", "1,2,3,4", "[[-0.5, 0.25, 2, 1]]", "[3, 2, 1, 0]"]
    # One predict thread: one model call at a time, so the requests queue behind the gated call.
    with serve_script(gated_forest, predict_placement="threads", predict_threads=1) as app:
        assert app.runtime.batches
        kinds = ["text/csv", "text/csv", "application/json", "application/json"]
        answers_alone = [post(app, body, kind).content for body, kind in zip(bodies, kinds, strict=True)]
        (gated_forest / "calls.txt").unlink()
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            for round_ in range(2):
                (gated_forest / "gate").unlink(missing_ok=True)
                before = len(calls(gated_forest))
                gated = pool.submit(post, app, "-1,0,0,0", "text/csv")
                wait_for(lambda n=before + 1: len(calls(gated_forest)) == n, "the gated call to start")
                futures = [pool.submit(post, app, body, kind) for body, kind in zip(bodies, kinds, strict=True)]
                wait_for(lambda: app.runtime.queued == 4, "4 queued requests")
                (gated_forest / "gate").touch()
                assert gated.result(30).status_code == 200
                assert [f.result(30).content for f in futures] == answers_alone
                made = calls(gated_forest)
                if round_ == 0:
                    # One call over the 5 rows, then each request alone once (in the order the
                    # requests queued): the stacker's check.
                    assert made[:2] == [1, 5] and sorted(made[2:]) == [1, 1, 1, 2]
                else:
                    assert len(made) == 8 and made[6:] == [1, 5]
        count, total = batch_size_metric(app)
        assert (count, total) == (4 + 2 * 2, 4 + 2 * 5)


def test_csv_bodies_of_the_pandas_script_read_back(sklearn_dataframes: ScriptHandler) -> None:
    """The DataFrame script itself answers what the pipeline predicts (so the property above
    compares real predictions)."""
    import pandas as pd

    reply = sklearn_dataframes.invoke(csv_rows(TRAIN_X[:3]))
    frame = pd.read_csv(io.StringIO("\n".join(",".join(map(str, r)) for r in TRAIN_X[:3])), header=None,
                        names=["a", "b", "c", "d"])
    want = [round(float(p), 12) for p in sklearn_dataframes.model.predict(frame)]
    assert json.loads(reply.body) == {"scores": want}


def test_the_xgboost_default_does_not_check_feature_names(tmp_path: Path) -> None:
    """As the XGBoost container's default_predict_fn (validate_features=False): a booster trained on
    a DataFrame answers CSV rows, alone and stacked."""
    import pandas as pd
    import xgboost

    frame = pd.DataFrame(TRAIN_X, columns=["a", "b", "c", "d"])
    booster = xgboost.train({"max_depth": 3}, xgboost.DMatrix(frame, label=TRAIN_Y), 6)
    booster.save_model(tmp_path / "model.json")
    handler = loaded(tmp_path, "import os\nimport xgboost\n\n\ndef model_fn(model_dir):\n"
                               "    booster = xgboost.Booster()\n"
                               "    booster.load_model(os.path.join(model_dir, 'model.json'))\n    return booster\n")
    invocations = [csv_rows(TRAIN_X[i:i + 2]) for i in (0, 2)]
    want = booster.predict(xgboost.DMatrix(frame.iloc[:4]))
    replies = handler.invoke_batch(invocations)
    assert [json.loads(r.body) for r in replies if isinstance(r, Reply)] == \
        [json.loads(json.dumps(want[:2].tolist())), json.loads(json.dumps(want[2:4].tolist()))]
    assert_byte_equal(replies, alone(handler, invocations))


def test_the_xgboost_default_reads_libsvm_and_refuses_json(xgboost_default: ScriptHandler, tmp_path: Path) -> None:
    """The XGBoost container's default input_fn: LIBSVM (here predicted alone in a batch: a sparse
    matrix does not stack), CSV with its own delimiter, and JSON refused (415) as the container does."""
    import xgboost

    from tests.codecs.test_xgboost_inputs import xgboost_reads

    libsvm = b"0 0:0.5 2:-1.25\n1 1:2 3:0.75\n"
    want = xgboost_default.model.predict(xgboost_reads(libsvm, tmp_path), validate_features=False)
    invocations = [Invocation(libsvm, "text/libsvm", "application/json"),
                   Invocation(b"0.5;0;-1.25;0", "text/csv", "application/json"),
                   Invocation(b"[[1, 2, 3, 4]]", "application/json", "application/json")]
    replies = xgboost_default.invoke_batch(invocations)
    assert_byte_equal(replies, alone(xgboost_default, invocations))
    first, second, third = replies
    assert isinstance(first, Reply) and json.loads(first.body) == json.loads(json.dumps(want.tolist()))
    csv_want = xgboost_default.model.predict(xgboost.DMatrix(np.array([[0.5, 0, -1.25, 0]])))
    assert isinstance(second, Reply) and json.loads(second.body) == json.loads(json.dumps(csv_want.tolist()))
    assert isinstance(third, MainsailError) and third.status_code == 415


RENDEZVOUS_SCRIPT = '''
import os
import time
import uuid
from pathlib import Path

import numpy as np
from sklearn.dummy import DummyRegressor

HERE = None


def model_fn(model_dir):
    global HERE
    HERE = Path(model_dir) / "arrived"
    HERE.mkdir()
    return DummyRegressor(constant=7.0, strategy="constant").fit([[0.0, 0.0]], [7.0])


def input_fn(body, content_type):
    """Waits (up to 20 s) until two requests are in input_fn together, as an input_fn waiting on
    I/O would overlap with another."""
    (HERE / uuid.uuid4().hex).touch()
    deadline = time.monotonic() + 20
    while len(os.listdir(HERE)) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("the other request never came in")
        time.sleep(0.01)
    return np.array([[float(x) for x in body.split(",")]], dtype=np.float32)
'''


def test_stacking_takes_no_concurrency_from_the_scripts_own_functions(tmp_path: Path) -> None:
    """Two requests whose input_fn waits for the other: with stacking on, one worker still runs them
    at once (as many batches as predict threads), as it would without batching."""
    write_script(tmp_path, RENDEZVOUS_SCRIPT)
    with serve_script(tmp_path, predict_placement="threads", predict_threads=2) as app:
        assert app.runtime.batches
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda body: post(app, body, "text/csv"), ["1,2", "3,4"]))
        assert [(a.status_code, a.json()) for a in answers] == [(200, [7.0]), (200, [7.0])]
