"""``mainsail serve`` as users run it: the real CLI in a subprocess, real HTTP on loopback."""

from __future__ import annotations

import concurrent.futures
import io
import os
import shutil
import signal
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest

from tests.conftest import SCRIPTS, ServerProcess, make_wheel, write_script

SEED_002_INFERENCE = Path(__file__).resolve().parents[2] / "examples" / "sdk" / "seed_002" / "inference.py"

pytestmark = pytest.mark.slow

PID_SCRIPT = """
    import os, time
    def model_fn(model_dir):
        return None
    def transform_fn(model, body, content_type, accept):
        if body:
            time.sleep(float(body))
        return str(os.getpid()), "text/plain"
"""


def sklearn_model_dir(root: Path) -> tuple[Path, object]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.RandomState(0)
    X = rng.randn(200, 5)
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    root.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, root / "model.joblib")
    return root, model


def make_tar(src: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(src.iterdir()):
            tar.add(item, arcname=item.name)
    return archive


def test_seed_002_script_unchanged_from_a_model_tar_gz(tmp_path: Path, home: Path) -> None:
    model_dir, model = sklearn_model_dir(tmp_path / "model")
    (model_dir / "code").mkdir()
    shutil.copy(SEED_002_INFERENCE, model_dir / "code" / "inference.py")
    archive = make_tar(model_dir, tmp_path / "model.tar.gz")
    rows = [[0.5, 1.2, 0.3, 0.8, 0.1], [-0.2, 0.7, 1.1, 0.4, 0.6]]
    with ServerProcess([str(archive), "--workers", "1"], home=home) as server:
        r = httpx.post(server.url + "/invocations", json={"instances": rows})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["predictions"] == model.predict(np.array(rows)).tolist()  # type: ignore[attr-defined]
        np.testing.assert_allclose(body["probabilities"], model.predict_proba(np.array(rows)))  # type: ignore[attr-defined]
        # The script itself refuses CSV (a ValueError): a 500 carrying its message, then service goes on.
        r = httpx.post(server.url + "/invocations", content="1,2,3,4,5", headers={"content-type": "text/csv"})
        assert r.status_code == 500
        assert "Unsupported content type: text/csv" in r.json()["message"]
        assert httpx.post(server.url + "/invocations", json={"instances": rows[:1]}).status_code == 200


def test_seed_004_style_dataframe_script(tmp_path: Path, home: Path) -> None:
    import xgboost

    rng = np.random.RandomState(1)
    features = ["length", "diameter", "height", "whole_weight"]
    frame = pd.DataFrame(rng.rand(100, 4), columns=features)
    model = xgboost.XGBRegressor(n_estimators=10, max_depth=3).fit(frame, frame.sum(axis=1))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    joblib.dump(model, model_dir / "xgb_model.joblib")
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(SCRIPTS / "seed004_inference.py", source / "abalone.py")
    env = {"SAGEMAKER_PROGRAM": "abalone.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(source),
           "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    with ServerProcess([str(model_dir)], env=env, home=home) as server:
        sample = frame.iloc[:3]
        expected = model.predict(sample)
        shuffled = sample[["height", "length", "whole_weight", "diameter"]].rename(columns=str.upper)
        r = httpx.post(server.url + "/invocations", content=shuffled.to_csv(index=False),
                       headers={"content-type": "text/csv", "accept": "text/csv"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        got = pd.read_csv(io.StringIO(r.text))
        np.testing.assert_allclose(got["prediction"], expected, rtol=1e-6)
        r = httpx.post(server.url + "/invocations", content=sample.to_json(orient="records"),
                       headers={"content-type": "application/json"})
        assert r.status_code == 200
        np.testing.assert_allclose([row["prediction"] for row in r.json()], expected, rtol=1e-6)


def test_source_dir_as_sourcedir_tar_gz(tmp_path: Path, home: Path) -> None:
    model_dir, model = sklearn_model_dir(tmp_path / "model")
    src = tmp_path / "src"
    src.mkdir()
    (src / "serve_me.py").write_text(textwrap.dedent("""
        import os, joblib
        from helper import SCALE
        def model_fn(model_dir):
            return joblib.load(os.path.join(model_dir, "model.joblib"))
        def predict_fn(data, model):
            return model.predict_proba(data)[:, 1] * SCALE
    """))
    (src / "helper.py").write_text("SCALE = 100\n")
    archive = make_tar(src, tmp_path / "sourcedir.tar.gz")
    with ServerProcess([str(model_dir), "--entry-point", "serve_me.py", "--source-dir", str(archive),
                        "--workers", "1"], home=home) as server:
        r = httpx.post(server.url + "/invocations", content="0.5,1,1,1,1", headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        expected = model.predict_proba(np.array([[0.5, 1, 1, 1, 1]], dtype=np.float32))[:, 1] * 100  # type: ignore[attr-defined]
        np.testing.assert_allclose(r.json(), expected, rtol=1e-6)


def test_workers_share_the_port_and_metrics_add_up(tmp_path: Path, home: Path) -> None:
    write_script(tmp_path, textwrap.dedent(PID_SCRIPT))
    with ServerProcess([str(tmp_path), "--workers", "2"], home=home) as server:
        pids: set[str] = set()

        def call(i: int) -> str:
            return httpx.post(server.url + "/invocations", content=b"0.05", timeout=30).text

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                pids.update(pool.map(call, range(16)))
                if len(pids) == 2:
                    break
        assert len(pids) == 2
        sent = 16 * (1 + _ + 0)
        # Two bad requests (one 4xx, one 5xx) on top.
        assert httpx.post(server.url + "/invocations", content=b"not-a-number").status_code == 500
        assert httpx.post(server.url + "/invocations", content=b"x" * (7 * 1024 * 1024)).status_code == 413
        metrics = httpx.get(server.url + "/metrics").text
        values = {line.split(" ")[0]: float(line.split(" ")[1])
                  for line in metrics.splitlines() if line and not line.startswith("#")}
        assert values["Invocations_total"] == sent + 2
        assert values["Invocation4XXErrors_total"] == 1
        assert values["Invocation5XXErrors_total"] == 1
        assert values["ModelLatency_count"] == sent + 1
        assert values["OverheadLatency_count"] == sent + 1


def test_a_killed_worker_is_replaced_and_ping_stays_truthful(tmp_path: Path, home: Path) -> None:
    write_script(tmp_path, textwrap.dedent(PID_SCRIPT))
    with ServerProcess([str(tmp_path), "--workers", "1"], home=home) as server:
        pid = int(httpx.post(server.url + "/invocations", content=b"").text)
        os.kill(pid, signal.SIGKILL)
        saw_503 = False
        deadline = time.monotonic() + 30
        new_pid = pid
        while time.monotonic() < deadline:
            try:
                ping = httpx.get(server.url + "/ping", timeout=5)
            except httpx.TransportError:
                continue
            if ping.status_code == 503:
                saw_503 = True
                assert ping.json()["error"] == "ModelNotReady"
            elif ping.status_code == 200:
                new_pid = int(httpx.post(server.url + "/invocations", content=b"").text)
                if new_pid != pid:
                    break
            time.sleep(0.02)
        assert new_pid != pid
        assert saw_503, "with its only worker dead, the server must answer 503, not 200"
        assert "died" in server.log()


def test_sigterm_drains_a_request_in_flight(tmp_path: Path, home: Path) -> None:
    write_script(tmp_path, textwrap.dedent(PID_SCRIPT))
    server = ServerProcess([str(tmp_path), "--workers", "1"], home=home)
    try:
        result: dict[str, object] = {}

        def slow_request() -> None:
            r = httpx.post(server.url + "/invocations", content=b"1.5", timeout=30)
            result["status"] = r.status_code

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert result.get("status") == 200
        assert server.proc.wait(30) == 0
    finally:
        server.stop()


def test_a_model_that_cannot_load_exits_with_the_reason(tmp_path: Path, home: Path) -> None:
    write_script(tmp_path, "def model_fn(model_dir):\n    raise FileNotFoundError('no weights here')\n")
    server = ServerProcess([str(tmp_path), "--workers", "2"], home=home, wait=False)
    try:
        assert server.proc.wait(60) == 3
        assert "FileNotFoundError: no weights here" in server.log()
    finally:
        server.stop()


def test_code_requirements_are_installed_once_and_cached(tmp_path: Path, home: Path) -> None:
    model_dir = tmp_path / "model"
    write_script(model_dir, textwrap.dedent("""
        import mainsail_test_dep
        def model_fn(model_dir):
            return None
        def transform_fn(model, body, content_type, accept):
            return mainsail_test_dep.ANSWER
    """))
    wheel = make_wheel(model_dir / "code", "mainsail_test_dep", "1.0", "ANSWER = 'from the wheel'\n")
    (model_dir / "code" / "requirements.txt").write_text(f"./{wheel.name}\n")
    with ServerProcess([str(model_dir), "--workers", "1"], home=home) as server:
        assert httpx.post(server.url + "/invocations", content=b"").text == "from the wheel"
    installed = [p for p in (home / "requirements").iterdir() if not p.name.startswith(".")]
    assert len(installed) == 1 and (installed[0] / "mainsail_test_dep").is_dir()

    # Told not to install, a requirement that is missing is reported (and the script fails to import).
    (model_dir / "code" / "requirements.txt").write_text("mainsail-test-dep-absent==1.0\n")
    server = ServerProcess([str(model_dir), "--workers", "1", "--no-install-requirements"],
                           home=tmp_path / "other-home", wait=False)
    try:
        assert server.proc.wait(60) == 3
        log = server.log()
        assert "mainsail-test-dep-absent==1.0" in log and "not installing" in log
    finally:
        server.stop()


def test_reload_restarts_workers_when_the_script_changes(tmp_path: Path, home: Path) -> None:
    script = write_script(tmp_path, textwrap.dedent("""
        def model_fn(model_dir):
            return None
        def transform_fn(model, body, content_type, accept):
            return "version 1"
    """))
    with ServerProcess([str(tmp_path), "--workers", "1", "--reload"], home=home) as server:
        assert httpx.post(server.url + "/invocations", content=b"").text == "version 1"
        time.sleep(1.1)  # mtime granularity: make sure the edit gets a newer timestamp
        script.write_text(script.read_text().replace("version 1", "version 2"))
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            try:
                r = httpx.post(server.url + "/invocations", content=b"", timeout=5)
                text = r.text
                if text == "version 2":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert text == "version 2"
    assert "died" not in server.log(), "retired workers must not be replaced as if they had crashed"


def test_unsafe_archive_is_refused(tmp_path: Path, home: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"print('owned')"
        info = tarfile.TarInfo("../../escape.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    server = ServerProcess([str(archive)], home=home, wait=False)
    try:
        assert server.proc.wait(60) == 1
        assert "unsafe member" in server.log()
    finally:
        server.stop()
    assert not (tmp_path.parent / "escape.py").exists()
