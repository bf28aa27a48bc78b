"""10,000 idle and slow connections held against the real `mainsail serve` (issue 18): good requests are
served, memory stays bounded, and the server closes the held connections itself (``mainsail.connections``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.held_connections import Probe, Target, http_request
from tests.conftest import ServerProcess, write_script
from tests.held import HEAD_TIMEOUT, hold_and_check

pytestmark = pytest.mark.slow

ECHO = """
def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    return body, "text/csv"
"""


def test_serve_holds_10000_idle_and_slow_connections_and_serves_on(tmp_path: Path, home: Path) -> None:
    write_script(tmp_path / "model", ECHO)
    env = {"MAINSAIL_REQUEST_HEAD_TIMEOUT": str(HEAD_TIMEOUT)}
    with ServerProcess([str(tmp_path / "model"), "--workers", "2"], env=env, home=home) as server:
        probes = [Probe("ping", http_request("GET", "/ping")),
                  Probe("invocations", http_request("POST", "/invocations", b"1,2\n", {"Content-Type": "text/csv"}))]
        hold_and_check("serve", Target("127.0.0.1", server.port), server.proc.pid, probes)
        assert "closed slow or idle client connections" in server.log()
