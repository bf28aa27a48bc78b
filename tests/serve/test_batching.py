"""Adaptive batching: who gets which answer, what fails alone, timeouts, and the no-wait rule.

The batch-forming tests hold the first model call on a gate file, queue requests behind it (the
runtime's ``queued`` count says when they are in), then open the gate: the next call must carry
all of them. Nothing here measures time.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mainsail.errors import MainsailError
from mainsail.handlers.base import Invocation, Reply
from mainsail.handlers.script import ScriptHandler
from mainsail.handlers.tabular import TabularHandler
from tests.conftest import LiveApp, assert_same_scores, live_app, write_script

GATED_SCRIPT = '''
import json
import time
from pathlib import Path


class BadInput(Exception):
    status_code = 400


def model_fn(model_dir):
    return Path(model_dir)


def input_fn(body, content_type):
    if content_type == "application/json":
        try:
            return json.loads(body)
        except ValueError as exc:
            raise BadInput(f"not JSON: {exc}") from None
    if content_type == "text/csv":
        return [float(x) for x in body.strip().split(",")]
    raise BadInput(f"cannot read {content_type}")


def predict_batch_fn(inputs, model):
    with open(model / "sizes.txt", "a") as f:
        f.write(f"{len(inputs)}\\n")
    if "wait" in inputs:
        deadline = time.monotonic() + 30
        while not (model / "gate").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    if "boom" in inputs:
        raise RuntimeError("boom breaks the model")
    return [{"echo": x} for x in inputs]


def output_fn(prediction, accept):
    if accept == "text/csv":
        echo = prediction["echo"]
        return ",".join(str(x) for x in (echo if isinstance(echo, list) else [echo]))
    return json.dumps(prediction)
'''


@pytest.fixture
def gated(tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    write_script(model_dir, GATED_SCRIPT)
    return model_dir


def serve_script(model_dir: Path, **settings: object) -> Any:
    return live_app(ScriptHandler(model_dir / "code" / "inference.py", model_dir), **settings)


def sizes(model_dir: Path) -> list[int]:
    path = model_dir / "sizes.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def post(app: LiveApp, body: str, content_type: str = "application/json",
         accept: str = "application/json") -> httpx.Response:
    return app.client.post("/invocations", content=body,
                           headers={"content-type": content_type, "accept": accept})


def batch_size_metric(app: LiveApp) -> tuple[float, float]:
    text = app.client.get("/metrics").text
    count = re.search(r"^BatchSize_count (\S+)$", text, re.M)
    total = re.search(r"^BatchSize_sum (\S+)$", text, re.M)
    assert count and total, text
    return float(count.group(1)), float(total.group(1))



def queue_behind_gate(app: LiveApp, model_dir: Path, pool: concurrent.futures.Executor,
                      requests: list[tuple[str, str, str]]) -> tuple[httpx.Response, list[httpx.Response]]:
    """Hold the model on a gated call, queue ``requests`` (body, content type, accept) behind it,
    open the gate; returns the gated request's response and theirs, in order."""
    gated = pool.submit(post, app, '"wait"')
    wait_for(lambda: sizes(model_dir) == [1], "the gated call to start")
    futures = [pool.submit(post, app, *request) for request in requests]
    wait_for(lambda: app.runtime.queued == len(requests), f"{len(requests)} queued requests")
    (model_dir / "gate").touch()
    return gated.result(30), [f.result(30) for f in futures]


def test_queued_requests_share_one_call_and_each_gets_its_own_answer(gated: Path) -> None:
    requests = [(json.dumps([k, k + 0.5, k + 0.25]), "application/json", "application/json") for k in range(4)]
    requests += [("7,8,9", "text/csv", "text/csv"), ("1.5,2.5", "text/csv", "application/json")]
    with serve_script(gated) as app, concurrent.futures.ThreadPoolExecutor(8) as pool:
        first, answers = queue_behind_gate(app, gated, pool, requests)
        assert first.status_code == 200 and first.json() == {"echo": "wait"}
        assert sizes(gated) == [1, len(requests)]
        for k in range(4):  # each request its own records, in its own order
            assert answers[k].status_code == 200
            assert answers[k].headers["content-type"].startswith("application/json")
            assert answers[k].json() == {"echo": [k, k + 0.5, k + 0.25]}
        assert answers[4].headers["content-type"].startswith("text/csv") and answers[4].text == "7.0,8.0,9.0"
        assert answers[5].json() == {"echo": [1.5, 2.5]}
        assert batch_size_metric(app) == (2.0, 1.0 + len(requests))


def test_a_request_that_fails_decoding_fails_alone(gated: Path) -> None:
    requests = [('{"not json', "application/json", "application/json"),
                ('"fine"', "application/json", "application/json"),
                ("<x/>", "application/xml", "application/json"),
                ("1,2", "text/csv", "text/csv")]
    with serve_script(gated) as app, concurrent.futures.ThreadPoolExecutor(6) as pool:
        _, answers = queue_behind_gate(app, gated, pool, requests)
        assert [a.status_code for a in answers] == [400, 200, 400, 200]
        assert "not JSON" in answers[0].json()["message"]
        assert answers[1].json() == {"echo": "fine"} and answers[3].text == "1.0,2.0"
        assert sizes(gated) == [1, 2]  # the model saw only the two that decoded
        assert post(app, '"next"').json() == {"echo": "next"}


def test_an_input_that_breaks_the_model_fails_alone(gated: Path) -> None:
    requests = [('"a"', "application/json", "application/json"), ('"boom"', "application/json", "application/json"),
                ('"b"', "application/json", "application/json")]
    with serve_script(gated) as app, concurrent.futures.ThreadPoolExecutor(5) as pool:
        _, answers = queue_behind_gate(app, gated, pool, requests)
        assert [a.status_code for a in answers] == [200, 500, 200]
        assert "boom breaks the model" in answers[1].json()["message"]
        assert [answers[0].json(), answers[2].json()] == [{"echo": "a"}, {"echo": "b"}]
        # The batch of three failed, then each ran alone.
        assert sizes(gated) == [1, 3, 1, 1, 1]


def test_a_call_past_the_timeout_is_504_and_the_worker_goes_on(gated: Path) -> None:
    with serve_script(gated, timeout=1.0) as app:
        try:
            stuck = post(app, '"wait"')
            assert stuck.status_code == 504, stuck.text
            # The stuck call still holds a thread, not the batcher: the next request is served.
            assert post(app, '"after"').json() == {"echo": "after"}
        finally:
            (gated / "gate").touch()


def test_a_lone_request_never_waits_for_the_batch_delay(gated: Path) -> None:
    with serve_script(gated, max_batch_delay_ms=10_000, timeout=120) as app:
        for k in range(3):  # one at a time: each finds the model idle and goes at once
            r = app.client.post("/invocations", content=str(k), headers={"content-type": "application/json"},
                                timeout=5)
            assert r.json() == {"echo": k}
        assert sizes(gated) == [1, 1, 1]


def test_the_delay_fills_a_batch_formed_under_load(gated: Path) -> None:
    with serve_script(gated, max_batch_delay_ms=10_000, max_batch_size=5, timeout=120) as app, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(post, app, '"wait"')
        wait_for(lambda: sizes(gated) == [1], "the gated call to start")
        queued = [pool.submit(post, app, str(k)) for k in range(3)]
        wait_for(lambda: app.runtime.queued == 3, "3 queued requests")
        (gated / "gate").touch()
        assert first.result(30).json() == {"echo": "wait"}
        # Three were left waiting when the gated call ended (load): they wait for more, up to the
        # delay, instead of going at once; two more fill the batch (five), which then goes.
        assert app.runtime.queued == 3 and sizes(gated) == [1]
        more = [pool.submit(post, app, str(k)) for k in (3, 4)]
        assert [f.result(30).json() for f in queued + more] == [{"echo": k} for k in range(5)]
        assert sizes(gated) == [1, 5]


def test_batching_off_and_scripts_without_predict_batch_fn_answer_one_by_one(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    write_script(model_dir, "def model_fn(d):\n    return 2\n\ndef predict_fn(x, m):\n    return [v * m for v in x]\n")
    with serve_script(model_dir) as app:
        assert not app.runtime.batches
        assert post(app, "[1, 2]").json() == [2, 4]
        assert batch_size_metric(app) == (0.0, 0.0)
    gated_dir = tmp_path / "gated"
    gated_dir.mkdir()
    write_script(gated_dir, GATED_SCRIPT)
    with serve_script(gated_dir, batching=False) as app:
        assert not app.runtime.batches
        # predict_batch_fn alone serves a lone request as a batch of one.
        assert post(app, '"x"').json() == {"echo": "x"}
        assert sizes(gated_dir) == [1]
        assert batch_size_metric(app) == (0.0, 0.0)


def test_predict_batch_fn_with_transform_fn_fails_the_load(tmp_path: Path) -> None:
    from mainsail.errors import ModelLoadError
    from mainsail.serve.runtime import ModelRuntime

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    script = write_script(model_dir, "def transform_fn(m, d, c, a):\n    return d\n\n"
                                     "def predict_batch_fn(x, m):\n    return x\n")
    with pytest.raises(ModelLoadError, match="predict_batch_fn"):
        ModelRuntime(ScriptHandler(script, model_dir)).load()


# -- the built-in handlers' batch path answers each request exactly as alone ---------------------

def outcomes_alone(handler: Any, invocations: list[Invocation]) -> list[Reply | MainsailError]:
    answers: list[Reply | MainsailError] = []
    for invocation in invocations:
        try:
            answers.append(handler.invoke(invocation))
        except MainsailError as exc:
            answers.append(exc)
    return answers


def mixed_tabular_invocations() -> list[Invocation]:
    from tests.handlers.test_tabular_handler import FEATURES, messy_records

    records = messy_records(12, seed=5)
    frame_csv = "\n".join(",".join("" if r.get(c) is None else str(r.get(c)) for c in FEATURES) for r in records[4:8])

    def inv(body: str, content_type: str | None, accept: str = "application/json") -> Invocation:
        return Invocation(body.encode(), content_type, accept)

    return [
        inv(json.dumps(records[0]), "application/json"),
        inv(json.dumps(records[1]), "application/json", "text/csv"),
        inv("\n".join(json.dumps(r) for r in records[2:4]), "application/jsonlines"),
        inv(frame_csv, "text/csv", "text/csv"),
        inv(json.dumps({"instances": records[8:11]}), "application/json"),
        inv("", "application/json"),                          # empty body: 400 alone
        inv("a,b", "text/csv"),                               # wrong width: 400 alone
        inv(json.dumps(records[11]), "application/xml"),      # unsupported type: 415 alone
        inv(json.dumps(records[0]), "application/json", "image/png"),  # unsupported accept: alone
    ]


def assert_same_outcomes(got: list[Reply | MainsailError], want: list[Reply | MainsailError],
                         compare: Callable[[Reply, Reply], None]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, MainsailError):
            assert isinstance(g, MainsailError) and (g.status_code, g.message) == (w.status_code, w.message)
        else:
            assert isinstance(g, Reply) and g.content_type == w.content_type and g.status == w.status
            compare(g, w)


def test_tabular_batch_answers_each_request_byte_for_byte_as_alone(tmp_path: Path) -> None:
    from tests.handlers.test_tabular_handler import train_xgboost

    train_xgboost(tmp_path, 3, "multiclass")
    handler = TabularHandler(tmp_path)
    handler.load()
    invocations = mixed_tabular_invocations()

    def same_bytes(g: Reply, w: Reply) -> None:
        assert g.body == w.body

    assert_same_outcomes(handler.invoke_batch(invocations), outcomes_alone(handler, invocations), same_bytes)
    statuses = [o.status_code if isinstance(o, MainsailError) else 200 for o in handler.invoke_batch(invocations)]
    assert statuses[:5] == [200] * 5 and all(400 <= s < 500 for s in statuses[5:])


@pytest.fixture(scope="module")
def bimodal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.bimodal_demo import build_bimodal_model
    from mainsail.handlers.pytorch.export import export_onnx

    model_dir = build_bimodal_model(tmp_path_factory.mktemp("batch-bimodal") / "model", size="tiny", seed=0)
    export_onnx(model_dir)
    return model_dir


@pytest.mark.parametrize("use_onnx", [False, True], ids=["pytorch", "onnx"])
def test_pytorch_batch_scores_each_record_as_alone(bimodal_dir: Path, use_onnx: bool) -> None:
    from examples.bimodal_demo import sample_records
    from mainsail.handlers.pytorch.handler import PyTorchHandler

    handler = PyTorchHandler(bimodal_dir, use_onnx=use_onnx, device="cpu")
    handler.load()
    records = sample_records(9, seed=11)
    invocations = [Invocation(json.dumps(r).encode(), "application/json", "application/json") for r in records[:5]]
    invocations.append(Invocation("\n".join(json.dumps(r) for r in records[5:]).encode(), "application/jsonlines",
                                  "application/json"))
    invocations.append(Invocation(b"{}", "application/json", "application/json"))  # missing columns: alone
    invocations.append(Invocation(b"", "application/json", "application/json"))

    def close(g: Reply, w: Reply) -> None:
        assert_same_scores(g.body, w.body, atol=1e-6)

    assert_same_outcomes(handler.invoke_batch(invocations), outcomes_alone(handler, invocations), close)


def test_builtin_handler_under_concurrent_load_answers_every_request_its_own(tmp_path: Path) -> None:
    from tests.handlers.test_tabular_handler import train_xgboost

    train_xgboost(tmp_path, 2, "binary")
    invocations = [i for i in mixed_tabular_invocations() if i.content_type != "application/xml"] * 4
    with live_app(TabularHandler(tmp_path), predict_threads=2) as app:
        def send(invocation: Invocation) -> httpx.Response:
            return app.client.post("/invocations", content=invocation.body,
                                   headers={"content-type": invocation.content_type or "", "accept": invocation.accept})

        alone = [send(i) for i in invocations]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            together = list(pool.map(send, invocations))
        for a, t in zip(alone, together, strict=True):
            assert (t.status_code, t.headers["content-type"], t.content) == \
                (a.status_code, a.headers["content-type"], a.content)
        count, total = batch_size_metric(app)
        assert total == 2 * len(invocations)  # every request went through the batcher once
        assert count <= total


def test_settings_read_the_batching_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    from mainsail.settings import ServeSettings

    monkeypatch.setenv("MAINSAIL_BATCHING", "false")
    monkeypatch.setenv("MAINSAIL_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("MAINSAIL_MAX_BATCH_DELAY_MS", "2.5")
    settings = ServeSettings()
    assert (settings.batching, settings.max_batch_size, settings.max_batch_delay_ms) == (False, 8, 2.5)
    monkeypatch.setenv("MAINSAIL_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="MAX_BATCH_SIZE"):
        ServeSettings()


def test_pytorch_large_batches_run_in_bounded_forward_passes(bimodal_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from examples.bimodal_demo import sample_records
    from mainsail.handlers.pytorch import handler as module

    handler = module.PyTorchHandler(bimodal_dir, use_onnx=False, device="cpu")
    handler.load()
    records = sample_records(24, seed=4)
    whole = handler.predict_records(records)
    shapes: list[int] = []
    network = handler.network
    assert network is not None
    original = network.probabilities

    def counting(inputs: Any) -> Any:
        shapes.append(len(next(iter(inputs.values()))))
        return original(inputs)

    monkeypatch.setattr(module, "MAX_SEQUENCES", 6)
    monkeypatch.setattr(network, "probabilities", counting)
    sliced = handler.predict_records(records)
    np.testing.assert_allclose(sliced, whole, atol=1e-6)
    assert sum(shapes) == len(records) and max(shapes) <= 6


SLEEPY_BATCH_SCRIPT = '''
import json
import time
from pathlib import Path


def model_fn(model_dir):
    return Path(model_dir)


def input_fn(body, content_type):
    return json.loads(body)


def predict_batch_fn(inputs, model):
    with open(model / "sizes.txt", "a") as f:
        f.write(f"{len(inputs)}\\n")
    if "sleep" in inputs:
        time.sleep(0.5)
    return [{"echo": x} for x in inputs]
'''


def test_on_the_event_loop_requests_read_during_a_call_form_the_next_batch(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    write_script(model_dir, SLEEPY_BATCH_SCRIPT)
    with serve_script(model_dir, predict_placement="loop", timeout=30) as app:
        clients = [httpx.Client(base_url=app.url, timeout=30) for _ in range(6)]
        try:
            for client in clients:  # keep-alive connections, open before the test
                assert client.post("/invocations", content="0").status_code == 200
            before = len(sizes(model_dir))
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                sleeper = pool.submit(clients[0].post, "/invocations", content='"sleep"')
                wait_for(lambda: len(sizes(model_dir)) > before, "the sleeping call")
                answers = list(pool.map(lambda i: clients[i].post("/invocations", content=str(i)), range(1, 6)))
                assert sleeper.result().json() == {"echo": "sleep"}
        finally:
            for client in clients:
                client.close()
    assert [r.json() for r in answers] == [{"echo": i} for i in range(1, 6)]
    later = sizes(model_dir)[before:]
    assert later[0] == 1 and sum(later[1:]) == 5
    assert max(later[1:]) >= 2, later  # read while the loop was busy, run together


def test_on_the_event_loop_a_batch_past_the_timeout_is_504_and_the_next_is_served(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    write_script(model_dir, SLEEPY_BATCH_SCRIPT)
    with serve_script(model_dir, predict_placement="loop", timeout=0.2) as app:
        slow = app.client.post("/invocations", content='"sleep"')
        assert slow.status_code == 504 and slow.json()["error"] == "Timeout"
        assert app.client.post("/invocations", content="7").json() == {"echo": 7}
