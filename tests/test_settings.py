from __future__ import annotations

import pytest
from pydantic import ValidationError

from mainsail.settings import ServeSettings


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
