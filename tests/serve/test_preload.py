"""Preload: the supervisor loads the model once and forks the workers, which share it.

Real ``mainsail serve`` processes with two workers: a script model (scikit-learn), the tabular
XGBoost handler and the PyTorch handler (torch network preloaded, ONNX network falling back to a
load in every worker), each compared with the per-worker mode (``--no-preload``).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest

from tests.conftest import ServerProcess, assert_same_scores, wait_ready, write_script

pytestmark = pytest.mark.slow

PRELOADED = "model loaded once by the supervisor"
NOT_PRELOADED = "not preloading the model"

PID_SKLEARN_SCRIPT = """
    import json, os, time
    import joblib, numpy as np

    def model_fn(model_dir):
        return joblib.load(os.path.join(model_dir, "model.joblib"))

    def transform_fn(model, body, content_type, accept):
        request = json.loads(body)
        time.sleep(request.get("sleep", 0))
        rows = np.asarray(request["rows"], dtype=float)
        reply = {"pid": os.getpid(), "probabilities": model.predict_proba(rows).tolist()}
        return json.dumps(reply), "application/json"
"""
ROWS = [[0.5, 1.2, 0.3, 0.8, 0.1], [-0.2, 0.7, 1.1, 0.4, 0.6], [0.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.fixture(scope="module")
def script_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("preload-script")
    rng = np.random.RandomState(0)
    X = rng.randn(200, 5)
    joblib.dump(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), root / "model.joblib")
    write_script(root, textwrap.dedent(PID_SKLEARN_SCRIPT))
    return root


@pytest.fixture(scope="module")
def bimodal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.bimodal_demo import build_bimodal_model
    from mainsail.handlers.pytorch.export import export_onnx

    model_dir = build_bimodal_model(tmp_path_factory.mktemp("preload-bimodal") / "model", size="tiny", seed=0)
    export_onnx(model_dir)
    return model_dir


@pytest.fixture
def server_home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def serving(server_home: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.__exit__()


def start(started: list[ServerProcess], args: list[str], home: Path, env: dict[str, str] | None = None,
          *, wait: bool = True) -> ServerProcess:
    server = ServerProcess(args, env=env, home=home, wait=wait)
    started.append(server)
    return server


def wait_all(servers: list[ServerProcess]) -> None:
    """Servers started with ``wait=False`` load side by side; wait until each answers /ping."""
    for server in servers:
        try:
            wait_ready(server.url, timeout=90, proc=server.proc)
        except Exception:
            raise RuntimeError(f"server did not start:\n{server.log()}") from None


def ask(server: ServerProcess, payload: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(server.url + "/invocations", json=payload, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def serving_pids(server: ServerProcess, want: int) -> set[int]:
    """The worker pids that answer, over concurrent slow requests (each worker takes some)."""
    pids: set[int] = set()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            pids.update(pool.map(lambda _: ask(server, {"rows": ROWS[:1], "sleep": 0.05})["pid"], range(16)))
            if len(pids) >= want:
                break
    return pids


def listening_sockets(pid: int, port: int) -> int:
    """How many listening TCP sockets on ``port`` process ``pid`` holds a descriptor of."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def test_script_model_preloaded_workers_share_serve_and_are_replaced(
        script_dir: Path, server_home: Path, serving: list[ServerProcess]) -> None:
    server = start(serving, [str(script_dir), "--workers", "2"], server_home, wait=False)
    reference = start(serving, [str(script_dir), "--workers", "1", "--no-preload"], server_home, wait=False)
    wait_all([server, reference])
    assert PRELOADED in server.log()
    assert "preload is off" in reference.log() and PRELOADED not in reference.log()
    assert ask(server, {"rows": ROWS})["probabilities"] == ask(reference, {"rows": ROWS})["probabilities"]
    pids = serving_pids(server, 2)
    assert len(pids) == 2
    assert server.proc.pid not in pids  # the supervisor loads, but never answers requests
    # Each worker holds its own listener only: none inherited from the supervisor's 503 responder
    # (a socket nobody accepts on would swallow the connections the kernel routes to it).
    assert {pid: listening_sockets(pid, server.port) for pid in pids} == {pid: 1 for pid in pids}
    assert listening_sockets(server.proc.pid, server.port) == 0

    victim = pids.pop()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    seen: set[int] = set()
    while time.monotonic() < deadline:
        seen |= serving_pids(server, 2)
        if len(seen - {victim}) == 2:
            break
    fresh = seen - {victim} - pids
    assert len(fresh) == 1, f"no replacement served: {seen}"
    assert "died" in server.log()
    assert server.log().count(PRELOADED) == 1, "the replacement is forked, not loaded again"
    assert {pid: listening_sockets(pid, server.port) for pid in fresh} == {pid: 1 for pid in fresh}
    assert ask(server, {"rows": ROWS})["probabilities"] == ask(reference, {"rows": ROWS})["probabilities"]

    assert server.stop() == 0  # SIGTERM: drained, clean exit


def test_one_worker_loads_the_model_itself(script_dir: Path, server_home: Path,
                                           serving: list[ServerProcess]) -> None:
    server = start(serving, [str(script_dir), "--workers", "1"], server_home)
    assert "one worker: nothing to share" in server.log() and PRELOADED not in server.log()
    assert ask(server, {"rows": ROWS})["pid"] != server.proc.pid


def test_sigterm_drains_a_preloaded_worker(script_dir: Path, server_home: Path,
                                           serving: list[ServerProcess]) -> None:
    server = start(serving, [str(script_dir), "--workers", "2"], server_home)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, server.url + "/invocations", json={"rows": ROWS, "sleep": 1.0}, timeout=30)
        time.sleep(0.4)
        server.proc.send_signal(signal.SIGTERM)
        assert slow.result().status_code == 200
    assert server.proc.wait(30) == 0


def test_a_model_fn_that_fails_in_the_supervisor_exits_with_the_reason(tmp_path: Path, server_home: Path) -> None:
    write_script(tmp_path, "def model_fn(model_dir):\n    raise FileNotFoundError('no weights here')\n")
    server = ServerProcess([str(tmp_path), "--workers", "2"], home=server_home, wait=False)
    try:
        assert server.proc.wait(60) == 3
        log = server.log()
        assert "FileNotFoundError: no weights here" in log
        assert "failed to load" in log and "died" not in log
    finally:
        server.stop()


def test_a_script_that_imports_onnxruntime_falls_back_and_says_why(
        tmp_path: Path, server_home: Path, serving: list[ServerProcess]) -> None:
    write_script(tmp_path, textwrap.dedent("""
        import os
        def model_fn(model_dir):
            import onnxruntime
            return onnxruntime.__version__
        def transform_fn(model, body, content_type, accept):
            return str(os.getpid()), "text/plain"
    """))
    server = start(serving, [str(tmp_path), "--workers", "2"], server_home)
    log = server.log()
    assert NOT_PRELOADED in log and "the model imported onnxruntime" in log
    assert PRELOADED not in log
    assert httpx.post(server.url + "/invocations", content=b"").status_code == 200


def test_tabular_xgboost_preloaded_answers_as_per_worker(
        tmp_path: Path, server_home: Path, serving: list[ServerProcess]) -> None:
    from mainsail.package import package_model
    from tests.test_package import CATS, FEATURES, FRAME, IMPUTE, RISK, xgb_booster

    model_dir = package_model(tmp_path / "model", xgb_booster(), feature_columns=FEATURES, cat_columns=CATS,
                              risk_tables=RISK, impute_values=IMPUTE)
    server = start(serving, [str(model_dir), "--workers", "2"], server_home, wait=False)
    reference = start(serving, [str(model_dir), "--workers", "1", "--no-preload"], server_home, wait=False)
    wait_all([server, reference])
    assert PRELOADED in server.log()
    records = json.loads(FRAME[FEATURES].head(20).to_json(orient="records"))
    body = "\n".join(json.dumps(r) for r in records)
    headers = {"content-type": "application/jsonlines", "accept": "application/json"}
    answers = set()
    for target in (server, server, server, reference):
        r = httpx.post(target.url + "/invocations", content=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        answers.add(r.text)
    assert len(answers) == 1


def test_pytorch_torch_network_preloaded_and_onnx_falls_back(
        bimodal_dir: Path, server_home: Path, serving: list[ServerProcess]) -> None:
    from examples.bimodal_demo import sample_records

    records = sample_records(4, seed=3)
    torch_env = {"MAINSAIL_USE_ONNX": "false", "MAINSAIL_DEVICE": "cpu"}
    preloaded = start(serving, [str(bimodal_dir), "--workers", "2"], server_home, env=torch_env, wait=False)
    per_worker = start(serving, [str(bimodal_dir), "--workers", "1", "--no-preload"], server_home, env=torch_env,
                       wait=False)
    onnx = start(serving, [str(bimodal_dir), "--workers", "2"], server_home, env={"MAINSAIL_DEVICE": "cpu"},
                 wait=False)
    wait_all([preloaded, per_worker, onnx])
    assert PRELOADED in preloaded.log()
    onnx_log = onnx.log()
    assert NOT_PRELOADED in onnx_log and "ONNX Runtime" in onnx_log and PRELOADED not in onnx_log

    def scores(server: ServerProcess) -> list[str]:
        texts = []
        for record in records:  # one at a time, and as a batch
            r = httpx.post(server.url + "/invocations", json=record, timeout=30)
            assert r.status_code == 200, r.text
            texts.append(r.text)
        r = httpx.post(server.url + "/invocations", content="\n".join(json.dumps(x) for x in records),
                       headers={"content-type": "application/jsonlines"}, timeout=30)
        assert r.status_code == 200, r.text
        return [*texts, r.text]

    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # concurrent: both workers take some
        shared = list(pool.map(lambda _: scores(preloaded), range(3)))
    expected = scores(per_worker)
    # Concurrent requests may be batched together: BLAS sums a batch in another order than one row,
    # so the scores agree to float rounding, not to the last digit.
    for answer in shared:
        for got, want in zip(answer, expected, strict=True):
            assert_same_scores(got, want, atol=1e-6)
    onnx_scores = [json.loads(text)["predictions"] for text in scores(onnx)[:-1]]
    torch_scores = [json.loads(text)["predictions"] for text in expected[:-1]]
    for got, want in zip(onnx_scores, torch_scores, strict=True):
        np.testing.assert_allclose(float(got[0]["legacy-score"]), float(want[0]["legacy-score"]), atol=1e-4)


def test_preload_safe_decides_per_handler_and_says_why(tmp_path: Path) -> None:
    from mainsail.handlers.base import Invocation, Reply
    from mainsail.handlers.pytorch.handler import PyTorchHandler
    from mainsail.handlers.tabular import TabularHandler
    from mainsail.serve.preload import preload_safe
    from mainsail.settings import ServeSettings

    settings = ServeSettings(workers=2)
    (tmp_path / "model.onnx").write_bytes(b"")
    assert preload_safe(TabularHandler(tmp_path), settings)[0]
    assert preload_safe(PyTorchHandler(tmp_path, use_onnx=False, device="cpu"), settings)[0]
    safe, reason = preload_safe(PyTorchHandler(tmp_path, device="cpu"), settings)  # model.onnx present
    assert not safe and "ONNX Runtime" in reason
    safe, reason = preload_safe(PyTorchHandler(tmp_path, use_onnx=False, device="cuda:0"), settings)
    assert not safe and "CUDA" in reason

    class Custom:
        name = "custom"

        def load(self) -> None: ...

        def invoke(self, invocation: Invocation) -> Reply:
            return Reply(b"", "text/plain")

    safe, reason = preload_safe(Custom(), settings)
    assert not safe and "not known to be fork-safe" in reason
    tabular = TabularHandler(tmp_path)
    assert not preload_safe(tabular, ServeSettings(workers=2, reload=True))[0]
    assert not preload_safe(tabular, ServeSettings(workers=2, preload=False))[0]
    assert not preload_safe(tabular, ServeSettings(workers=1))[0]
