"""The trial of ``mainsail doctor``: load the model with its real handler, then invoke it once.

The model is loaded in a ``ModelRuntime`` and a sample (given, or made up from the handler's columns)
is sent through the serving app's own ``POST /invocations``, in process; the answer's status,
latency and size are judged against SageMaker's limits.
"""

from __future__ import annotations

import json
import mimetypes
import time
from pathlib import Path
from typing import Any

from mainsail.doctor.findings import MB, State, human_size
from mainsail.doctor.limits import (
    INVOCATION_TIMEOUT_S,
    RESPONSE_LIMIT,
    SERVERLESS_PAYLOAD_LIMIT,
    check_sample_size,
)
from mainsail.errors import ModelLoadError
from mainsail.handlers import build_handler
from mainsail.serve.app import create_app
from mainsail.serve.runtime import ModelRuntime

_CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv", ".jsonl": "application/jsonlines",
                  ".jsonlines": "application/jsonlines", ".npy": "application/x-npy",
                  ".parquet": "application/x-parquet", ".txt": "text/plain"}


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


def trial_invocation(runtime: Any, settings: Any, body: bytes, content_type: str, accept: str | None,
                     state: State, *, serverless: bool = False) -> None:
    """POST the sample to the serving app's /invocations, in process, and judge the reply."""
    from starlette.testclient import TestClient

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
                  f"the response is {human_size(len(response.content))}, over SageMaker's {limit // MB} MB {kind} "
                  "response limit", "return fewer fields or smaller batches")



def load_and_invoke(prepared: Any, settings: Any, state: State, *, body: bytes | None, sample: Path | None,
                     content_type: str | None, accept: str | None, serverless: bool) -> None:
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
