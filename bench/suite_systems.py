"""The systems the suite serves each model with: mainsail (batching on and off) and the peers.

Every server gets 2 workers and ``OMP_NUM_THREADS=1`` (``bench.serve.server_env``); mainsail runs in its
default configuration (``bench.serve.mainsail_argv``: no ``--log-level``, so its access log is on), the peers
with no access log. Each runs in its own process group on a free loopback port, and is stopped with SIGTERM
(then its group killed).
MLServer runs from its own virtual environment (``scripts/peer-venv``): it pins its own FastAPI,
Starlette and pydantic, and must never share mainsail's.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Server, ServerError, free_port, running, stop
from bench.serve import HOST, ROOT, gunicorn_argv, mainsail_argv, server_env
from bench.suite_models import SuiteModel

WORKERS = 2
MLSERVER_BATCH: dict[str, Any] = {"max_batch_size": 16, "max_batch_time": 0.002}


@dataclass(frozen=True)
class System:
    key: str
    label: str
    v2: bool = False
    """Speaks the V2 inference protocol (MLServer) rather than SageMaker's ``/invocations``."""


SYSTEMS = {s.key: s for s in (
    System("mainsail", "mainsail (default)"),
    System("mainsail-nobatch", "mainsail, batching off"),
    System("flask", "Flask + gunicorn sync"),
    System("fastapi", "FastAPI + uvicorn"),
    System("mlserver-batch", "MLServer, adaptive batching", v2=True),
    System("mlserver", "MLServer, no batching", v2=True),
)}
FLOOR = "floor"
FLOOR_LABEL = "in-process handler (floor)"


def mlserver_venv() -> tuple[Path | None, str]:
    """(the MLServer virtualenv, "") once ``scripts/peer-venv`` has built it, else (None, why not)."""
    try:
        done = subprocess.run([str(ROOT / "scripts" / "peer-venv")], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"scripts/peer-venv did not finish: {exc}"
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "is ignored" not in line]
        return None, f"scripts/peer-venv failed ({done.returncode}): {' '.join(errors[-3:])[:300]}"
    venv = Path(done.stdout.strip().splitlines()[-1])
    return (venv, "") if (venv / "bin" / "mlserver").is_file() else (None, f"no mlserver in {venv}")


def invocation_path(system: System, model: SuiteModel) -> str:
    if system.v2:
        assert model.mlserver is not None
        return f"/v2/models/{model.mlserver.name}/infer"
    return "/invocations"


@contextmanager
def serve(system: System, model: SuiteModel, tmp: Path, mlserver: Path | None) -> Iterator[Server]:
    """Start ``system`` serving ``model`` and yield it once it answers; always stop it."""
    port = free_port()
    home = {"MAINSAIL_HOME": str(tmp / f"home-{system.key}")}
    if system.key.startswith("mainsail"):
        batching = {"MAINSAIL_BATCHING": "off"} if system.key == "mainsail-nobatch" else {}
        argv = mainsail_argv(model.path, port, WORKERS)
        env = server_env({**home, **model.env, **batching})
    elif system.key == "flask":
        argv, env = gunicorn_argv(port, WORKERS), server_env({"BENCH_MODEL_DIR": str(model.peer_path), **model.env})
    elif system.key == "fastapi":
        # PEER_BASELINE's fastapi_uvicorn_w2: uvloop, httptools, access log off.
        argv = [sys.executable, "-m", "uvicorn", "bench.peers.fastapi_app:app", "--host", HOST, "--port", str(port),
                "--workers", str(WORKERS), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--log-level", "warning"]
        env = server_env({"BENCH_MODEL_DIR": str(model.peer_path), **model.env})
    elif system.v2:
        if mlserver is None or model.mlserver is None:
            raise ValueError(f"{system.key} needs the MLServer venv and a model MLServer can serve")
        with _mlserver(system, model, tmp / system.key, port, mlserver) as server:
            yield server
        return
    else:
        raise ValueError(f"unknown system {system.key!r}: one of {sorted(SYSTEMS)}")
    with running(f"suite-{model.key}-{system.key}", argv, host=HOST, port=port, env=env, cwd=ROOT,
                 ready_timeout_s=300) as server:
        yield server


def mlserver_repository(system: System, model: SuiteModel, repo: Path, port: int) -> Path:
    """An MLServer model repository: ``settings.json`` (server) and ``<name>/model-settings.json``."""
    assert model.mlserver is not None
    spec = model.mlserver
    settings = {"debug": False, "host": HOST, "http_port": port, "grpc_port": free_port(),
                "metrics_port": free_port(), "parallel_workers": WORKERS}
    model_settings: dict[str, Any] = {"name": spec.name, "implementation": spec.implementation,
                      "parameters": {"uri": f"./{spec.model_file.name}"}}
    if system.key == "mlserver-batch":
        model_settings.update(MLSERVER_BATCH)
    (repo / spec.name).mkdir(parents=True)
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    (repo / spec.name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    (repo / spec.name / spec.model_file.name).symlink_to(spec.model_file.resolve())
    return repo


@contextmanager
def _mlserver(system: System, model: SuiteModel, repo: Path, port: int, venv: Path) -> Iterator[Server]:
    assert model.mlserver is not None
    mlserver_repository(system, model, repo, port)
    log = tempfile.NamedTemporaryFile(prefix=f"bench-suite-{system.key}-", suffix=".log", delete=False)
    argv = [str(venv / "bin" / "mlserver"), "start", str(repo)]
    # Its own interpreter and site-packages: nothing of .venv's (PYTHONPATH, VIRTUAL_ENV) leaks in.
    env = {k: v for k, v in server_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    try:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   cwd=repo, start_new_session=True)
    finally:
        log.close()
    server = Server(f"suite-{model.key}-{system.key}", process, HOST, port, Path(log.name), argv)
    try:
        # MLServer has no /ping: it is ready once the model is (its server-level ready can say 200 first).
        _wait_model_ready(server, f"/v2/models/{model.mlserver.name}/ready", timeout_s=300)
        yield server
    finally:
        stop(server)
        Path(log.name).unlink(missing_ok=True)


def _wait_model_ready(server: Server, path: str, timeout_s: float) -> None:
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        if server.process.poll() is not None:
            raise ServerError(f"{server.name} exited with code {server.process.returncode} before it was ready; "
                              f"its log ends with:\n{server.log_tail()}")
        conn = http.client.HTTPConnection(server.host, server.port, timeout=1.0)
        try:
            conn.request("GET", path)
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException):
            status = None
        finally:
            conn.close()
        if status == 200:
            server.ready_s = time.monotonic() - started
            return
        time.sleep(0.1)
    raise ServerError(f"{server.name}: {path} did not answer 200 within {timeout_s:.0f} s; its log ends with:\n"
                      f"{server.log_tail()}")
