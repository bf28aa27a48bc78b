"""`make demo`'s control-plane part (examples/up_demo.py): `mainsail up`, then seed 003's boto3 life cycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_up_demo_deploys_invokes_and_cleans_up(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from demo import package_tabular_model  # type: ignore[import-not-found]
    from up_demo import run  # type: ignore[import-not-found]

    model = tmp_path / "model"
    record = package_tabular_model(model)
    code = run(model, free_port(), "250.0,12,voucher,EU\n", record)
    out = capsys.readouterr().out
    assert code == 0, out
    for call in ("sm.create_model", "sm.create_endpoint_config", "sm.create_endpoint", "endpoint_in_service",
                 "sm.delete_endpoint", "sm.delete_endpoint_config", "sm.delete_model", "mainsail up stopped"):
        assert call in out
    answers = [line for line in out.splitlines() if line.startswith("<- AllTraffic: ")]
    assert len(answers) == 2 and all('"calibrated-score"' in a for a in answers)
    assert "InService after" in out
