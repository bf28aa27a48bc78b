"""``mainsail serve --api-key``: every request but ``GET /ping`` carries the key (``X-Api-Key`` or
``Authorization: Bearer``), for the single-model and the multi-model servers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.control.helpers import INFERENCE_OK, make_model_dir

pytestmark = pytest.mark.slow
KEY = "s3cret-api-key"


def check(url: str, invoke_path: str, body: bytes) -> None:
    assert httpx.get(f"{url}/ping").status_code == 200  # health checks need no key
    missing = httpx.post(f"{url}{invoke_path}", content=body, headers={"Content-Type": "text/csv"})
    assert missing.status_code == 401
    assert missing.json()["error"] == "Unauthorized" and "X-Api-Key" in missing.json()["message"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(f"{url}{invoke_path}", content=body, headers={"Content-Type": "text/csv", "X-Api-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["message"] == "The API key is not valid."
    for auth in ({"X-Api-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        ok = httpx.post(f"{url}{invoke_path}", content=body, headers={"Content-Type": "text/csv", **auth})
        assert ok.status_code == 200, ok.text
        assert float(ok.text.strip("[]\n ")) == pytest.approx(2.0)
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/metrics", headers={"X-Api-Key": KEY}).status_code == 200


def test_serve_requires_the_api_key(tmp_path: Path, home: Path) -> None:
    model = make_model_dir(tmp_path / "model", INFERENCE_OK)
    with ServerProcess([str(model), "--workers", "1", "--api-key", KEY], home=home) as server:
        check(server.url, "/invocations", b"1,0")


def test_multi_model_serve_requires_the_api_key(tmp_path: Path, home: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    make_model_dir(tmp_path / "m1", INFERENCE_OK)
    with ServerProcess(["--multi-model", str(models)], home=home, env={"MAINSAIL_API_KEY": KEY}) as server:
        load = httpx.post(f"{server.url}/models", json={"model_name": "m1", "url": str(tmp_path / "m1")})
        assert load.status_code == 401
        load = httpx.post(f"{server.url}/models", json={"model_name": "m1", "url": str(tmp_path / "m1")},
                          headers={"X-Api-Key": KEY}, timeout=60)
        assert load.status_code == 200, load.text
        check(server.url, "/models/m1/invoke", b"1,0")


def test_a_short_api_key_is_refused(tmp_path: Path, home: Path) -> None:
    server = ServerProcess([str(tmp_path), "--api-key", "short"], home=home, wait=False)
    assert server.proc.wait(60) == 2
    server.stop()
    assert "at least 8 characters" in server.log()
