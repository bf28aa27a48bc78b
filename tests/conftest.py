"""Shared fixtures: real servers on free loopback ports, and model directories built in the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from mainsail.handlers.base import Handler
from mainsail.serve.app import create_app
from mainsail.serve.runtime import ModelRuntime
from mainsail.settings import ServeSettings

SCRIPTS = Path(__file__).parent / "scripts"
FIXTURES = Path(__file__).parent / "fixtures"
# A model directory written by the reference pipeline, with the reference handler's answers (its README).
CURSUS_FIXTURE = FIXTURES / "cursus_trimodal"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/ping", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class ThreadedServer:
    """An ASGI app served by a real uvicorn in a thread of the test process, on a free loopback port."""

    def __init__(self, app: Any, *, lifespan: str = "on", **config_args: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan=lifespan, **config_args)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class LiveApp(ThreadedServer):
    """The data plane's app around one runtime, with an httpx client."""

    def __init__(self, runtime: ModelRuntime, settings: ServeSettings, load_on_startup: bool) -> None:
        self.runtime = runtime
        super().__init__(create_app(runtime, settings, load_on_startup=load_on_startup))
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def __enter__(self) -> LiveApp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.stop()


@contextmanager
def live_app(handler: Handler, *, load: bool = True, load_on_startup: bool = False,
             **settings: object) -> Iterator[LiveApp]:
    """Serve ``handler`` over real HTTP; with ``load`` the model is loaded before the first request."""
    serve_settings = ServeSettings(workers=1, **settings)  # type: ignore[arg-type]
    runtime = ModelRuntime.from_settings(handler, serve_settings)
    if load:
        runtime.load()
    with LiveApp(runtime, serve_settings, load_on_startup) as app:
        yield app


class ServerProcess:
    """``mainsail serve`` as a subprocess (the real CLI), stopped with SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, wait: bool = True,
                 home: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **(env or {})}
        if home is not None:
            full_env["MAINSAIL_HOME"] = str(home)
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"mainsail-serve-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mainsail.cli", "serve", *args, "--port", str(self.port)],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait:
            try:
                wait_ready(self.url, proc=self.proc)
            except Exception:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log()}") from None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "mainsail-home"
    path.mkdir()
    return path


def write_script(model_dir: Path, source: str, name: str = "inference.py") -> Path:
    code = model_dir / "code"
    code.mkdir(parents=True, exist_ok=True)
    path = code / name
    path.write_text(source)
    return path


def open_gate_and_wait(gate: Path, marker: Path, timeout: float = 20.0) -> str:
    """Open the FIFO ``gate`` a streaming script blocks on (from a thread: opening blocks until the script
    reads), then wait, bounded, for the script to write ``marker``; its text ("" if it never came)."""

    def release() -> None:
        with open(gate, "w") as opened:
            opened.write("go")

    threading.Thread(target=release, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return marker.read_text() if marker.exists() else ""


def make_wheel(directory: Path, name: str, version: str, module_source: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of package ``name`` (module ``name``), written by hand: what pip and uv install."""
    import zipfile

    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": module_source,
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist_info}/RECORD", record)
    return wheel


def _numbers_close(got: Any, want: Any, atol: float) -> bool:
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_numbers_close(got[k], want[k], atol) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_numbers_close(g, w, atol) for g, w in zip(got, want, strict=True))
    try:
        return abs(float(got) - float(want)) <= atol
    except (TypeError, ValueError):
        return bool(got == want)


def assert_same_scores(got: str | bytes, want: str | bytes, *, atol: float) -> None:
    """Two JSON responses alike but for float rounding: same keys, numbers (or numeric strings)
    within ``atol``, everything else equal."""
    assert _numbers_close(json.loads(got), json.loads(want), atol), f"{got!r} != {want!r}"
