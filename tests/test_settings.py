from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from mainsail.cli.app import app
from mainsail.settings import ControlSettings, S3Access, ServeSettings


def test_sagemaker_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "SAGEMAKER_PROGRAM": "serve.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/code",
        "SAGEMAKER_BIND_TO_PORT": "9090", "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "12.5", "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "10",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = ServeSettings()
    assert (s.entry_point, s.source_dir, s.port, s.workers, s.timeout, s.log_level, s.default_accept,
            s.max_payload_bytes) == ("serve.py", "/opt/ml/code", 9090, 3, 12.5, "info", "text/csv",
                                     10 * 1024 * 1024)


def test_explicit_values_win_and_generic_env_names_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9090")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("HOME", "/somewhere")
    monkeypatch.setenv("MAINSAIL_HOME", "/tmp/mainsail-home")
    s = ServeSettings(port=7000)
    assert s.port == 7000
    assert s.host == "127.0.0.1"
    assert str(s.home) == "/tmp/mainsail-home"


@pytest.mark.parametrize("bad", [{"workers": 0}, {"timeout": 0}, {"port": 70000}, {"log_level": "loud"},
                                 {"framework": "tensorflow"}])
def test_invalid_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ServeSettings(**bad)  # type: ignore[arg-type]


# -- ControlSettings: what `mainsail up` reads once at its start ---------------------------------

CONTROL_ENV = ("MAINSAIL_HOME", "MAINSAIL_UP_HOST", "MAINSAIL_UP_PORT", "MAINSAIL_SERVERLESS_IDLE_SECONDS",
               "MAINSAIL_ASYNC_IDLE_SECONDS", "MAINSAIL_DESCRIBE_SETTLE_SECONDS", "MAINSAIL_MODEL_DATA_MAX_BYTES",
               "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
               "MAINSAIL_INSTANCE_CLIENT")


@pytest.fixture
def clean_control_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in CONTROL_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_control_settings_defaults(clean_control_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_control_env.setenv("HOME", str(tmp_path))
    s = ControlSettings()
    assert (s.home, s.host, s.port, s.serverless_idle_seconds, s.async_idle_seconds, s.describe_settle_seconds,
            s.model_data_max_bytes, s.s3, s.instance_client) == (
        tmp_path / ".mainsail", "127.0.0.1", 8700, 300.0, None, 5.0, 20 * 1024**3, S3Access(None, None), "loopback")


def test_control_settings_read_their_variables(clean_control_env: pytest.MonkeyPatch) -> None:
    env = {"MAINSAIL_HOME": "/srv/ms", "MAINSAIL_UP_HOST": "0.0.0.0", "MAINSAIL_UP_PORT": "9700",
           "MAINSAIL_SERVERLESS_IDLE_SECONDS": "2.5", "MAINSAIL_ASYNC_IDLE_SECONDS": "30",
           "MAINSAIL_DESCRIBE_SETTLE_SECONDS": "0", "MAINSAIL_MODEL_DATA_MAX_BYTES": "1000",
           "AWS_ENDPOINT_URL": "http://general:1", "AWS_ENDPOINT_URL_S3": "http://s3:2",
           "AWS_DEFAULT_REGION": "eu-west-1", "MAINSAIL_INSTANCE_CLIENT": "aiohttp"}
    for key, value in env.items():
        clean_control_env.setenv(key, value)
    s = ControlSettings()
    assert (str(s.home), s.host, s.port, s.serverless_idle_seconds, s.async_idle_seconds,
            s.describe_settle_seconds, s.model_data_max_bytes, s.instance_client) == (
        "/srv/ms", "0.0.0.0", 9700, 2.5, 30.0, 0.0, 1000, "aiohttp")
    assert s.s3 == S3Access("http://s3:2", "eu-west-1")  # the S3-specific endpoint wins over the general one
    clean_control_env.delenv("AWS_ENDPOINT_URL_S3")
    clean_control_env.setenv("AWS_REGION", "ap-south-1")
    clean_control_env.setenv("MAINSAIL_ASYNC_IDLE_SECONDS", " ")  # blank: unset
    s = ControlSettings()
    assert s.s3 == S3Access("http://general:1", "ap-south-1") and s.async_idle_seconds is None


def test_control_settings_explicit_values_win_and_generic_names_are_ignored(
        clean_control_env: pytest.MonkeyPatch) -> None:
    for key, value in {"HOST": "0.0.0.0", "PORT": "1", "REGION": "x", "MAINSAIL_UP_PORT": "9700"}.items():
        clean_control_env.setenv(key, value)
    s = ControlSettings(port=8800, home=Path("~/elsewhere"))
    assert (s.host, s.port, s.region) == ("127.0.0.1", 8800, None)
    assert s.home == Path.home() / "elsewhere"


@pytest.mark.parametrize("bad", [{"port": 70000}, {"serverless_idle_seconds": -1}, {"model_data_max_bytes": 0},
                                 {"describe_settle_seconds": -1}, {"instance_client": "httpx"}])
def test_invalid_control_settings_are_refused(bad: dict[str, object], clean_control_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        ControlSettings(**bad)  # type: ignore[arg-type]


def test_mainsail_up_refuses_a_bad_setting(clean_control_env: pytest.MonkeyPatch) -> None:
    clean_control_env.setenv("MAINSAIL_MODEL_DATA_MAX_BYTES", "lots")
    result = CliRunner().invoke(app, ["up", "--port", "0"])
    assert result.exit_code == 2
    assert "model_data_max_bytes" in result.output or "MAINSAIL_MODEL_DATA_MAX_BYTES" in result.output
