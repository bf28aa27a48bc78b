"""A model's ``code/requirements.txt`` wins as in the container: planned against the environment,
installed as a per-model overlay (uv, or pip), first on the workers' ``sys.path``; conflicts with what
mainsail needs and torch from the index are refused before any request.

The wheels are written by the tests and found with ``--no-index --find-links`` in the file itself, so
nothing here reaches an index. ``tqdm`` stands for "a package the environment has at another version":
it is installed here (transformers needs it) and the serving process never imports it.
"""

from __future__ import annotations

import json
import logging
import textwrap
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.specifiers import SpecifierSet

from mainsail.doctor import diagnose
from mainsail.errors import ModelLoadError
from mainsail.serve.requirements import (
    Change,
    conflicts_with_mainsail,
    mainsail_needs,
    plan_requirements,
    prepare_requirements,
)
from tests.conftest import ServerProcess, make_wheel, write_script

TQDM = metadata.version("tqdm")
ORJSON = metadata.version("orjson")
TORCH = metadata.version("torch")

VERSION_SCRIPT = """
import tqdm

def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    return tqdm.__version__ + " from " + ("overlay" if "mainsail-home" in tqdm.__file__ else "environment")
"""


def model_with(tmp_path: Path, lines: str, script: str = VERSION_SCRIPT) -> Path:
    model_dir = tmp_path / "model"
    write_script(model_dir, textwrap.dedent(script))
    wheels = model_dir / "code" / "wheels"
    make_wheel(wheels, "tqdm", "0.0.1", "__version__ = '0.0.1 (pinned)'\n")
    make_wheel(wheels, "orjson", "0.1", "")
    make_wheel(wheels, "needs_old_torch", "1.0", "", requires=("torch==2.0.1",))
    make_wheel(wheels, "needs_torch", "1.0", "import torch\nVERSION = torch.__version__\n", requires=("torch",))
    (model_dir / "code" / "requirements.txt").write_text("--no-index\n--find-links ./wheels\n" + lines)
    return model_dir


def test_a_pin_wins_over_the_environment_in_every_worker_and_is_reused(tmp_path: Path, home: Path) -> None:
    model_dir = model_with(tmp_path, "tqdm==0.0.1\n")
    with ServerProcess([str(model_dir), "--workers", "2"], home=home) as server:
        answers = {httpx.post(server.url + "/invocations", content=b"").text for _ in range(8)}
        log = server.log()
    assert answers == {"0.0.1 (pinned) from overlay"}
    assert f"pins tqdm==0.0.1: it is used before the environment's {TQDM}" in log
    assert "installing 1 package(s) with uv" in log and " + tqdm==0.0.1" in log  # the installer's progress
    (overlay,) = [p for p in (home / "requirements").iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in overlay.iterdir() if not p.name.startswith(".")) == [
        "tqdm", "tqdm-0.0.1.dist-info"]  # only what differs: nothing the environment already has
    plan = json.loads((overlay / ".mainsail-plan.json").read_text())["changes"]
    assert [(c["name"], c["version"], c["installed"]) for c in plan] == [("tqdm", "0.0.1", TQDM)]

    # the second start resolves nothing: the overlay of this file and environment is there
    with ServerProcess([str(model_dir), "--workers", "1"], home=home) as server:
        assert httpx.post(server.url + "/invocations", content=b"").text == "0.0.1 (pinned) from overlay"
        log = server.log()
    assert "using the installed overlay" in log and "resolving" not in log

    # told not to install, the environment's version serves (and the difference is said)
    with ServerProcess([str(model_dir), "--workers", "1", "--no-install-requirements"], home=home) as server:
        assert httpx.post(server.url + "/invocations", content=b"").text == f"{TQDM} from environment"
        assert f"tqdm==0.0.1 (installed: {TQDM})" in server.log()


def test_pip_installs_the_overlay_where_uv_is_absent(tmp_path: Path, home: Path) -> None:
    model_dir = model_with(tmp_path, "tqdm==0.0.1\n")
    with ServerProcess([str(model_dir), "--workers", "1"], home=home, env={"MAINSAIL_INSTALLER": "pip"}) as server:
        assert httpx.post(server.url + "/invocations", content=b"").text == "0.0.1 (pinned) from overlay"
        assert "installing 1 package(s) with pip" in server.log()


def test_a_pin_that_mainsail_cannot_run_with_fails_before_any_request(tmp_path: Path, home: Path) -> None:
    model_dir = model_with(tmp_path, "orjson==0.1\n")
    server = ServerProcess([str(model_dir), "--workers", "1"], home=home, wait=False)
    try:
        assert server.proc.wait(120) == 1
        log = server.log()
    finally:
        server.stop()
    assert f"code/requirements.txt needs orjson 0.1, but mainsail needs orjson>=3.9, installed here: {ORJSON}" in log
    assert "--no-install-requirements" in log
    assert not [p for p in (home / "requirements").iterdir() if not p.name.startswith(".")]  # nothing installed


def test_torch_is_never_downloaded(tmp_path: Path, home: Path) -> None:
    # needing another torch is refused with pip's reason, before anything is installed
    with pytest.raises(ModelLoadError) as exc:
        plan_requirements(model_with(tmp_path / "a", "needs_old_torch\n") / "code" / "requirements.txt")
    assert f"other than the installed {TORCH}" in exc.value.message
    assert "needs-old-torch 1.0 depends on torch==2.0.1" in exc.value.message

    # needing torch, the installed one is it: only the package itself is planned
    requirements = model_with(tmp_path / "b", "needs_torch\n") / "code" / "requirements.txt"
    assert [(c.name, c.version, c.installed) for c in plan_requirements(requirements)] == [
        ("needs_torch", "1.0", None)]
    overlay = prepare_requirements(requirements, home / "requirements")
    assert overlay.path is not None and not (overlay.path / "torch").exists()


def test_the_environment_satisfying_everything_needs_no_overlay(tmp_path: Path, home: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    requirements = model_with(tmp_path, f"tqdm=={TQDM}\norjson\n") / "code" / "requirements.txt"
    with caplog.at_level(logging.INFO, logger="mainsail"):
        overlay = prepare_requirements(requirements, home / "requirements")
    assert overlay.path is None and overlay.changes == () and overlay.paths == []
    assert "satisfies every requirement" in caplog.text


def test_an_unresolvable_file_fails_with_pips_reason(tmp_path: Path, home: Path) -> None:
    requirements = model_with(tmp_path, "mainsail-no-such-package==1.0\n") / "code" / "requirements.txt"
    with pytest.raises(ModelLoadError) as exc:
        prepare_requirements(requirements, home / "requirements")
    assert "pip cannot resolve" in exc.value.message and "mainsail-no-such-package" in exc.value.message


def test_conflicts_name_who_needs_what() -> None:
    needs = {"numpy": [("mainsail", SpecifierSet(">=1.26")), ("pandas", SpecifierSet(">=1.23"))]}
    old = Change("numpy", "1.24.4", "2.1.3", "numpy @ https://example/numpy.whl")
    assert conflicts_with_mainsail([old], needs) == [
        "code/requirements.txt needs numpy 1.24.4, but mainsail needs numpy>=1.26, installed here: 2.1.3"]
    assert conflicts_with_mainsail([Change("numpy", "1.22", None, "")], needs)[1] == (
        "code/requirements.txt needs numpy 1.22, but mainsail (through pandas) needs numpy>=1.23")
    assert conflicts_with_mainsail([Change("numpy", "2.0.0", "2.1.3", "")], needs) == []
    # the real closure: core dependencies and the extras asked for (uvicorn[standard]), not mainsail's extras
    real = mainsail_needs()
    assert "orjson" in real and "uvloop" in real and "scikit-learn" not in real and "tqdm" not in real


def test_doctor_reports_pins_and_conflicts(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_HOME", str(home))
    model_dir = model_with(tmp_path, "tqdm==0.0.1\norjson==0.1\n")
    static = {(f.level, f.check): f for f in diagnose(model_dir, invoke=False)}
    assert f"asks for tqdm==0.0.1 but {TQDM} is installed" in static["warning", "requirements.version"].message
    conflict = static["error", "requirements.conflict"]
    assert f"orjson==0.1 (installed here: {ORJSON}), but mainsail needs orjson>=3.9" in conflict.message

    installed = {(f.level, f.check): f for f in diagnose(model_dir, invoke=False, install_requirements=True)}
    assert "mainsail needs orjson>=3.9" in installed["error", "requirements.conflict"].message

    (model_dir / "code" / "requirements.txt").write_text("--no-index\n--find-links ./wheels\ntqdm==0.0.1\n")
    findings = {(f.level, f.check): f for f in diagnose(model_dir, install_requirements=True)}
    assert f"tqdm 0.0.1 (installed here: {TQDM})" in findings["ok", "requirements.install"].message


def test_instances_starting_together_install_once(tmp_path: Path, home: Path) -> None:
    """The instances of one endpoint start at once: one installs the overlay, the others wait for it and
    use it (nobody replaces an overlay another process imports from)."""
    import subprocess
    import sys

    requirements = model_with(tmp_path, "tqdm==0.0.1\n") / "code" / "requirements.txt"
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            "from pathlib import Path\nfrom mainsail.serve.requirements import prepare_requirements\n"
            f"print('overlay', prepare_requirements(Path({str(requirements)!r}), Path({str(home / 'requirements')!r})).path)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert sum("installing 1 package(s)" in out for out in outputs) == 1
    assert len({line for out in outputs for line in out.splitlines() if line.startswith("overlay ")}) == 1
    (overlay,) = [p for p in (home / "requirements").iterdir() if not p.name.startswith(".")]
    assert (overlay / "tqdm" / "__init__.py").read_text() == "__version__ = '0.0.1 (pinned)'\n"
