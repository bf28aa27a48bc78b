"""Fixtures of the CloudWatch tests: one control plane for the module (CloudWatch's clock 60 times faster
than real time) and a client of each of CloudWatch's three protocols (:mod:`tests.cloudwatch.helpers`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cloudwatch.helpers import PROTOCOLS, CloudWatchPlane, cloudwatch_client


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudWatchPlane]:
    with CloudWatchPlane(tmp_path_factory.mktemp("cloudwatch")) as p:
        yield p


@pytest.fixture(scope="module")
def clients(plane: CloudWatchPlane, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("models")
    return {protocol: cloudwatch_client(plane.url, protocol, root) for protocol in PROTOCOLS}


@pytest.fixture(params=PROTOCOLS)
def cw(request: pytest.FixtureRequest, clients: dict[str, Any]) -> Any:
    """A CloudWatch client of each protocol in turn."""
    return clients[request.param]
