"""The servers ``python -m bench serve`` and ``python -m bench profile`` start, and how each is started.

Every system runs in its default, documented configuration; a tuned one is an extra system with its
own key and a label that says "(tuned)". Each gets the same model directory, ``OMP_NUM_THREADS=1``
(``server_env``) and its own free loopback port.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

MAINSAIL = "mainsail"
MAINSAIL_TUNED = "mainsail-log-warning"
FLASK = "flask-gunicorn"
FASTAPI = "fastapi-uvicorn"
BARE = "bare-asgi"
SYSTEMS = (MAINSAIL, MAINSAIL_TUNED, FLASK, FASTAPI, BARE)
DEFAULT_SYSTEMS = (MAINSAIL, MAINSAIL_TUNED, FASTAPI, BARE, FLASK)
"""What ``python -m bench serve`` runs, in this order (interleaved: reversed every other round)."""
SYSTEM_LABELS = {
    MAINSAIL: "mainsail serve",
    MAINSAIL_TUNED: "mainsail serve --log-level warning (tuned)",
    FLASK: "Flask + gunicorn sync",
    FASTAPI: "FastAPI + uvicorn",
    BARE: "bare ASGI app on uvicorn",
}


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every server gets: one thread of native compute per worker (as the peers had)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def mainsail_argv(model_dir: Path, port: int, workers: int, *, log_level: str | None = None,
                  module: bool = False) -> list[str]:
    """``mainsail serve MODEL_DIR``: its defaults unless ``log_level`` is given (then ``--log-level``).

    ``module``: run ``python -m mainsail.cli`` rather than the installed ``mainsail`` script, so a
    ``PYTHONPATH`` put first picks which tree of mainsail runs.
    """
    script = Path(sys.executable).parent / "mainsail"
    launcher = [str(script)] if script.exists() and not module else [sys.executable, "-m", "mainsail.cli"]
    argv = [*launcher, "serve", str(model_dir), "--host", HOST, "--port", str(port), "--workers", str(workers)]
    return argv + (["--log-level", log_level] if log_level else [])


def gunicorn_argv(port: int, workers: int) -> list[str]:
    # PEER_BASELINE's flask_gunicorn_sync_w2: gunicorn -k sync -w 2 straight on TCP, access log off
    # (gunicorn's default), every other setting gunicorn's default.
    return [sys.executable, "-m", "gunicorn", "-k", "sync", "-w", str(workers), "-b", f"{HOST}:{port}",
            "--pythonpath", str(ROOT), "--log-level", "warning", "bench.peers.flask_app:app"]


def uvicorn_peer_argv(app: str, port: int, workers: int) -> list[str]:
    """A peer app under uvicorn as PEER_BASELINE's fastapi_uvicorn_w2: uvloop, httptools, access log off."""
    return [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def canned_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "bench.peers.canned", "--host", HOST, "--port", str(port)]


def system_argv(system: str, model_dir: Path, port: int, workers: int, home: Path,
                mainsail_src: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that start ``system`` serving ``model_dir`` on ``port``.

    ``mainsail_src``: a source tree whose ``mainsail`` package runs instead of the installed one.
    """
    if system in (MAINSAIL, MAINSAIL_TUNED):
        argv = mainsail_argv(model_dir, port, workers, log_level="warning" if system == MAINSAIL_TUNED else None,
                             module=mainsail_src is not None)
        env = server_env({"MAINSAIL_HOME": str(home)})
        if mainsail_src is not None:
            env["PYTHONPATH"] = os.pathsep.join((str(mainsail_src), env["PYTHONPATH"]))
        return argv, env
    peer_env = server_env({"BENCH_MODEL_DIR": str(model_dir)})
    if system == FLASK:
        return gunicorn_argv(port, workers), peer_env
    if system == FASTAPI:
        return uvicorn_peer_argv("bench.peers.fastapi_app:app", port, workers), peer_env
    if system == BARE:
        return uvicorn_peer_argv("bench.peers.bare_asgi:app", port, workers), peer_env
    raise ValueError(f"unknown system {system!r}: one of {SYSTEMS}")
