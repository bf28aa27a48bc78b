"""mainsail doctor: real model directories and archives, each problem detected and named."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import textwrap
from importlib import metadata
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from mainsail.cli.app import app
from mainsail.doctor import Finding, diagnose, exit_code
from mainsail.package import fit_and_package, package_model

runner = CliRunner()

FEATURES = ["num1", "num2", "color"]
RNG = np.random.default_rng(0)
FRAME = pd.DataFrame({"num1": RNG.normal(size=120), "num2": RNG.normal(size=120),
                      "color": RNG.choice(["red", "green", "blue"], size=120)})
FRAME["label"] = ((FRAME["num1"] + (FRAME["color"] == "red")) > 0.3).astype(int)

X = FRAME[["num1", "num2"]].to_numpy()
Y = FRAME["label"].to_numpy()

SCRIPT = """
import os
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""


@pytest.fixture(scope="module")
def tabular_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tab") / "model"
    fit_and_package(out, LogisticRegression(), FRAME, label="label", feature_columns=FEATURES,
                    cat_columns=["color"], archive=True)
    return out


def script_model(tmp_path: Path, source: str, *, requirements: str | None = None) -> Path:
    model_dir = tmp_path / "scripted"
    (model_dir / "code").mkdir(parents=True)
    joblib.dump(LogisticRegression().fit(X, Y), model_dir / "model.joblib")
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(source))
    if requirements is not None:
        (model_dir / "code" / "requirements.txt").write_text(requirements)
    return model_dir


def make_tar(path: Path, source: Path, arcname: str = ".") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return path


def by_check(findings: list[Finding], check: str, level: str | None = None) -> list[Finding]:
    return [f for f in findings if f.check == check and (level is None or f.level == level)]


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]


def flat(output: str) -> str:
    """The rich table's text with its wrapping undone."""
    return " ".join(output.split())


def sample_file(tmp_path: Path, text: str = "[[0.5, 1.0]]", name: str = "sample.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- good models ------------------------------------------------------------------------------------

def test_good_tabular_directory_cli(tabular_dir: Path) -> None:
    result = runner.invoke(app, ["doctor", str(tabular_dir)])
    assert result.exit_code == 0, result.output
    assert "✓" in result.output and "✗" not in result.output and "0 error(s), 0 warning(s)" in result.output
    findings = diagnose(tabular_dir)
    assert all(f.level == "ok" for f in findings), findings
    status = by_check(findings, "invoke.status")[0]
    assert "HTTP 200" in status.message and "calibrated-score" in status.message


def test_good_tar_gz_json(tabular_dir: Path) -> None:
    archive = tabular_dir.parent / "model.tar.gz"
    assert archive.is_file()
    result = runner.invoke(app, ["doctor", str(archive), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["errors"] == 0 and report["warnings"] == 0
    checks = {f["check"] for f in report["findings"]}
    assert {"archive.readable", "archive.safe", "layout.root", "handler", "load", "invoke.status"} <= checks
    assert all(f["level"] == "ok" for f in report["findings"])


def test_good_script_with_sample(tmp_path: Path) -> None:
    model_dir = script_model(tmp_path, SCRIPT)
    findings = diagnose(model_dir, sample=sample_file(tmp_path))
    assert not errors(findings), findings
    assert "HTTP 200" in by_check(findings, "invoke.status")[0].message
    # no sample: the script still loads, the trial invocation is skipped with a warning (fails --strict)
    findings = diagnose(model_dir)
    assert by_check(findings, "load", "ok") and by_check(findings, "invoke.sample", "warning")
    assert exit_code(findings) == 0 and exit_code(findings, strict=True) == 1


# -- archives ---------------------------------------------------------------------------------------

def test_top_level_folder_archive(tmp_path: Path) -> None:
    model_dir = script_model(tmp_path, SCRIPT)
    archive = make_tar(tmp_path / "model.tar.gz", model_dir, arcname="mymodel")
    result = runner.invoke(app, ["doctor", str(archive), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    top = [f for f in report["findings"] if f["check"] == "layout.top_level_folder"]
    assert top and top[0]["level"] == "error"
    assert "top-level folder mymodel/" in top[0]["message"]
    assert top[0]["fix"] == "tar from inside it: `tar -czf model.tar.gz -C mymodel .`"


def test_unsafe_archive(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    findings = diagnose(archive)
    assert by_check(findings, "archive.readable", "ok")
    unsafe = by_check(findings, "archive.safe", "error")
    assert unsafe and "unsafe member" in unsafe[0].message
    assert not (tmp_path.parent / "escape.txt").exists()


def test_unreadable_archive(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"not a tarball")
    assert by_check(diagnose(archive), "archive.readable", "error")


# -- the script -------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ("def model_fn(model_dir):\n    return 1\n\nx = )\n", "SyntaxError"),
    ("import numpy\nimport mainsail_no_such_package_xyz\n", "No module named 'mainsail_no_such_package_xyz'"),
])
def test_script_that_fails_to_import(tmp_path: Path, source: str, expected: str) -> None:
    findings = diagnose(script_model(tmp_path, source))
    failed = by_check(findings, "script.import", "error")
    assert failed and expected in failed[0].message and "inference.py line" in failed[0].message
    assert failed[0].fix
    assert not by_check(findings, "load")  # no load attempted after a failed import


def test_a_module_the_containers_ship_is_not_sent_to_requirements_txt(tmp_path: Path) -> None:
    findings = diagnose(script_model(tmp_path, "from sagemaker_containers.beta.framework import trainer\n"))
    (failed,) = by_check(findings, "script.import", "error")
    assert "sagemaker_containers" in failed.message
    assert failed.fix and "requirements.txt" not in failed.fix and "Python 3.11" in failed.fix


def test_misspelt_handler_names(tmp_path: Path) -> None:
    source = SCRIPT + textwrap.dedent("""
        def input_function(body, content_type):
            return body

        def predict(data, model):
            return model.predict(data)

        def output_fun(prediction, accept):
            return str(prediction)

        def helper(x):
            return x
    """)
    findings = diagnose(script_model(tmp_path, source))
    near = {f.message for f in by_check(findings, "script.near_miss", "warning")}
    assert near == {
        "`predict_fn` is missing but `predict` is defined: SageMaker ignores it and uses the default predict_fn",
        "`input_fn` is missing but `input_function` is defined: SageMaker ignores it and uses the default input_fn",
        "`output_fn` is missing but `output_fun` is defined: SageMaker ignores it and uses the default output_fn",
    }
    assert exit_code(findings) == 0  # warnings only (the defaults do serve)
    result = runner.invoke(app, ["doctor", str(tmp_path / "scripted"), "--strict", "--no-invoke"])
    assert result.exit_code == 1 and "rename `predict` to `predict_fn`" in flat(result.output)


@pytest.mark.parametrize("name, target", [("inputfn", "input_fn"), ("model_fn_", "model_fn"), ("transformfn", "transform_fn"),
                                          ("predcit_fn", "predict_fn"), ("load_model", "model_fn"),
                                          ("helper", None), ("pre_model_fn", None)])
def test_near_miss_names(name: str, target: str | None) -> None:
    from mainsail.doctor.checks import near_miss_target as _near_miss_target

    assert _near_miss_target(name) == target


def test_wrong_arity(tmp_path: Path) -> None:
    source = textwrap.dedent("""
        def model_fn():
            return None

        def input_fn(body):
            return body
    """)
    findings = diagnose(script_model(tmp_path, source))
    bad = {f.message.split(":")[0] for f in by_check(findings, "script.signature", "error")}
    assert bad == {"model_fn", "input_fn"}
    fixes = " ".join(f.fix or "" for f in by_check(findings, "script.signature"))
    assert "input_fn(input_data, content_type)" in fixes and "model_fn(model_dir)" in fixes


def test_transform_fn_with_predict_fn(tmp_path: Path) -> None:
    source = SCRIPT + textwrap.dedent("""
        def predict_fn(data, model):
            return model.predict(data)

        def transform_fn(model, body, content_type, accept):
            return body
    """)
    findings = diagnose(script_model(tmp_path, source))
    mix = by_check(findings, "script.transform_fn_mix", "error")
    assert mix and "predict_fn" in mix[0].message and "Cannot use transform_fn" in mix[0].message


def test_no_model_fn_and_no_default(tmp_path: Path) -> None:
    findings = diagnose(script_model(tmp_path, "def predict_fn(data, model):\n    return data\n"))
    assert by_check(findings, "script.model_fn", "error")


def test_requirements_missing_and_version_mismatch(tmp_path: Path) -> None:
    import numpy

    tqdm = metadata.version("tqdm")
    requirements = (f"mainsail-no-such-package-xyz==1.0\nnumpy=={numpy.__version__}\nnumpy>1.26,<9\ntqdm<1.0\n"
                    "# comment\n")
    findings = diagnose(script_model(tmp_path, SCRIPT, requirements=requirements), invoke=False)
    missing = by_check(findings, "requirements.missing", "warning")
    assert len(missing) == 1 and "mainsail-no-such-package-xyz==1.0" in missing[0].message
    assert "mainsail serve" in (missing[0].fix or "") and "pip install" in (missing[0].fix or "")
    mismatch = by_check(findings, "requirements.version", "warning")
    assert len(mismatch) == 1 and f"tqdm<1.0 but {tqdm} is installed" in mismatch[0].message
    assert "installs tqdm<1.0 for this model" in mismatch[0].message
    assert not errors(findings)

    # a range no version of which mainsail runs with is a conflict, before any deployment
    findings = diagnose(script_model(tmp_path / "old", SCRIPT, requirements="numpy<1.0\n"), invoke=False)
    (conflict,) = by_check(findings, "requirements.conflict", "error")
    assert f"asks for numpy<1.0 (installed here: {numpy.__version__}), but mainsail needs numpy>=" in conflict.message
    assert f"`numpy=={numpy.__version__}`" in (conflict.fix or "")


def test_entry_point_not_found(tmp_path: Path) -> None:
    findings = diagnose(script_model(tmp_path, SCRIPT), entry_point="serve_me.py")
    assert by_check(findings, "script.entry_point", "error")


def test_script_in_the_wrong_place(tabular_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    joblib.dump(LogisticRegression().fit(X, Y), model_dir / "model.joblib")
    (model_dir / "inference.py").write_text(SCRIPT)
    findings = diagnose(model_dir, invoke=False)
    assert by_check(findings, "layout.script_location", "warning")


# -- built-in handler artifacts ---------------------------------------------------------------------

def test_tabular_missing_feature_columns(tmp_path: Path) -> None:
    model = LogisticRegression().fit(X, Y)  # fitted on an array: the model names no features
    out = package_model(tmp_path / "m", model, feature_columns=["num1", "num2"])
    (out / "feature_columns.txt").unlink()
    findings = diagnose(out)
    assert by_check(findings, "artifacts.feature_columns", "warning")
    load = by_check(findings, "load", "error")
    assert load and "feature_columns.txt is missing" in load[0].message


def test_xgboost_missing_feature_columns_is_an_error(tmp_path: Path) -> None:
    import xgboost

    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 2}, xgboost.DMatrix(X, label=Y),
                            num_boost_round=3)
    out = package_model(tmp_path / "m", booster, feature_columns=["num1", "num2"])
    (out / "feature_columns.txt").unlink()
    findings = diagnose(out)
    assert by_check(findings, "artifacts.feature_columns", "error")
    assert by_check(findings, "load", "ok")  # mainsail falls back to the booster's feature names
    assert "HTTP 200" in by_check(findings, "invoke.status")[0].message


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_malicious_risk_table_pickle_is_never_run(tabular_dir: Path, tmp_path: Path) -> None:
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(tabular_dir, model_dir)
    marker = tmp_path / "pwned"
    with (model_dir / "risk_table_map.pkl").open("wb") as fh:
        pickle.dump({"color": _Evil(marker)}, fh)
    result = runner.invoke(app, ["doctor", str(model_dir), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    risk = [f for f in report["findings"] if f["check"] == "artifacts.risk_table_map"]
    assert risk[0]["level"] == "error" and "refused to load posix.mkdir" in risk[0]["message"]
    assert not marker.exists()


def test_broken_calibration(tabular_dir: Path, tmp_path: Path) -> None:
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(tabular_dir, model_dir)
    (model_dir / "calibration").mkdir()
    (model_dir / "calibration" / "calibration_model.pkl").write_bytes(b"garbage")
    assert by_check(diagnose(model_dir, invoke=False), "artifacts.calibration", "error")


def test_nothing_to_serve(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"x")
    findings = diagnose(model_dir)
    assert by_check(findings, "handler", "error")


# -- trial invocation and limits --------------------------------------------------------------------

def test_predict_fn_raises(tmp_path: Path) -> None:
    source = SCRIPT + textwrap.dedent("""
        def predict_fn(data, model):
            raise ValueError("feature 7 is out of range")
    """)
    model_dir = script_model(tmp_path, source)
    findings = diagnose(model_dir, sample=sample_file(tmp_path))
    status = by_check(findings, "invoke.status", "error")
    assert status and "HTTP 500" in status[0].message
    assert "ValueError: feature 7 is out of range" in status[0].message
    result = runner.invoke(app, ["doctor", str(model_dir), "--sample", str(tmp_path / "sample.json")])
    assert result.exit_code == 1 and "feature 7 is out of range" in flat(result.output)


def test_sample_over_the_limits(tmp_path: Path) -> None:
    model_dir = script_model(tmp_path, SCRIPT + textwrap.dedent("""
        def predict_fn(data, model):
            return [len(data)]
    """))
    row = "0.5,1.0\n"
    big = sample_file(tmp_path, row * (6 * 1024 * 1024 // len(row) + 10), name="big.csv")
    findings = diagnose(model_dir, sample=big)
    size = by_check(findings, "limits.request_size", "error")
    assert size and "6 MB real-time" in size[0].message
    assert "HTTP 200" in by_check(findings, "invoke.status")[0].message  # the model itself still answers

    medium = sample_file(tmp_path, row * (5 * 1024 * 1024 // len(row)), name="medium.csv")
    assert by_check(diagnose(model_dir, sample=medium, invoke=False), "limits.request_size", "ok")
    serverless = by_check(diagnose(model_dir, sample=medium, serverless=True, invoke=False), "limits.request_size")
    assert serverless[0].level == "error" and "4 MB serverless" in serverless[0].message


def test_timeout_setting_over_60s(tabular_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_TIMEOUT", "300")
    findings = diagnose(tabular_dir, invoke=False)
    assert by_check(findings, "limits.timeout", "warning")


def test_missing_path() -> None:
    result = runner.invoke(app, ["doctor", "/nonexistent/model", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["findings"][0]["check"] == "model.path"


def test_model_fn_raises_at_load(tmp_path: Path) -> None:
    source = "def model_fn(model_dir):\n    raise FileNotFoundError('weights.bin is not in ' + model_dir)\n"
    findings = diagnose(script_model(tmp_path, source), sample=sample_file(tmp_path))
    load = by_check(findings, "load", "error")
    assert load and "FileNotFoundError: weights.bin is not in" in load[0].message
    assert not by_check(findings, "invoke.status")


def test_source_dir_option(tmp_path: Path) -> None:
    model_dir = script_model(tmp_path, SCRIPT)
    source = tmp_path / "src"
    source.mkdir()
    (model_dir / "code" / "inference.py").rename(source / "serve.py")
    findings = diagnose(model_dir, source_dir=str(source), entry_point="serve.py", sample=sample_file(tmp_path))
    assert not errors(findings), findings
    assert str(source / "serve.py") in by_check(findings, "script.entry_point", "ok")[0].message
    assert by_check(diagnose(model_dir, source_dir=str(tmp_path / "nowhere")), "script.entry_point", "error")


# -- the built-in PyTorch handler (the team's reference fixture) ------------------------------------

def _cursus_model() -> Path:
    from tests.conftest import CURSUS_FIXTURE

    model = CURSUS_FIXTURE / "model"
    if not model.is_dir():
        pytest.skip(f"reference fixture {model} not present")
    pytest.importorskip("transformers")
    return model


def test_pytorch_reference_model(tmp_path: Path) -> None:
    import shutil

    findings = diagnose(_cursus_model())
    assert all(f.level == "ok" for f in findings), findings
    assert by_check(findings, "artifacts.tokenizer", "ok")
    assert "HTTP 200" in by_check(findings, "invoke.status")[0].message

    broken = tmp_path / "model"
    shutil.copytree(_cursus_model(), broken)
    shutil.rmtree(broken / "tinybert")
    findings = diagnose(broken)
    tokenizer = by_check(findings, "artifacts.tokenizer", "error")
    assert tokenizer and "tinybert" in tokenizer[0].message
    assert by_check(findings, "load", "error")
