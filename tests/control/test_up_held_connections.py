"""10,000 idle and slow connections held against the real `mainsail up` (issue 18): the SageMaker API and
InvokeEndpoint are served, memory stays bounded, and the control plane closes the held connections itself
(``mainsail.connections``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.held_connections import Probe, Target, http_request
from tests.control.helpers import INFERENCE_OK, UpProcess, deploy, make_model_dir
from tests.held import HEAD_TIMEOUT, hold_and_check

pytestmark = pytest.mark.slow

AMZ_JSON = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.ListEndpoints"}
SLOW_BODY = (b"POST / HTTP/1.1\r\nHost: held\r\nX-Amz-Target: SageMaker.ListEndpoints\r\n"
             b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 65536\r\n\r\n")


def test_up_holds_10000_idle_and_slow_connections_and_serves_on(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "model", INFERENCE_OK)
    up = UpProcess(tmp_path / "home", env={"MAINSAIL_REQUEST_HEAD_TIMEOUT": str(HEAD_TIMEOUT)})
    try:
        sm = up.client("sagemaker")
        deploy(sm, "held", model_dir)
        sm.get_waiter("endpoint_in_service").wait(EndpointName="held", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        probes = [Probe("ListEndpoints", http_request("POST", "/", b"{}", AMZ_JSON)),
                  Probe("InvokeEndpoint", http_request("POST", "/endpoints/held/invocations", b"1.0,0.0",
                                                       {"Content-Type": "text/csv"}))]
        target = Target("127.0.0.1", up.port, slowloris_head=b"POST / HTTP/1.1\r\nHost: held\r\n",
                        slow_body_head=SLOW_BODY)
        hold_and_check("up", target, up.proc.pid, probes, root_only=True)
        log = up.log_text(1_000_000)
        assert "closed slow or idle client connections" in log
        assert "Traceback" not in log  # a client gone mid-body is nobody's error
    finally:
        assert up.stop() == 0, up.log_text()
