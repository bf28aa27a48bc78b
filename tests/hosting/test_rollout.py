"""Rollouts on the in-memory backend, stepped by hand on a fake clock: UpdateEndpoint blue/green (the
old config serves until every new instance answers, then traffic switches and the old instances
drain), its rollback when the new config cannot run, and UpdateEndpointWeightsAndCapacities up and
down. No process, no socket, no sleep."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mainsail.aws.errors import ValidationException
from mainsail.routing.table import Table
from tests.hosting.harness import Hosting, wait_for


@pytest.fixture
def hosting(tmp_path: Path) -> Iterator[Hosting]:
    h = Hosting(tmp_path)
    yield h
    h.close()


def _routed(h: Hosting, name: str) -> set[Any]:
    """The addresses the router sends the endpoint's requests to."""
    return {a for v in Table.of(h.record(name)).variants for a in v.addresses}


def test_update_endpoint_is_blue_green(hosting: Hosting) -> None:
    h = hosting
    h.deploy("live")
    (blue,) = h.serving("live")
    h.model("live-v2", ready=False)
    h.config("live-v2", {"VariantName": "AllTraffic", "ModelName": "live-v2", "InitialInstanceCount": 2})
    h.call("UpdateEndpoint", EndpointName="live", EndpointConfigName="live-v2")
    assert h.status("live") == "Updating"
    with pytest.raises(ValidationException, match="Cannot update in-progress endpoint"):  # one at a time
        h.call("UpdateEndpoint", EndpointName="live", EndpointConfigName="live-v2")
    h.step("live")
    green = h.serving("live", "PendingInstances")
    assert len(green) == 2 and all(g.spec.model_data_url == "file:///models/live-v2" for g in green)
    desc = h.describe("live")
    assert desc["EndpointConfigName"] == "live" and desc["PendingDeploymentSummary"]["EndpointConfigName"] == "live-v2"
    assert _routed(h, "live") == {blue.address}  # the old config serves meanwhile
    green[0].ready = True
    h.step("live", 3)
    assert h.status("live") == "Updating" and _routed(h, "live") == {blue.address}  # not until all answer
    green[1].ready = True
    h.step("live")
    desc = h.describe("live")
    assert desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == "live-v2"
    assert "PendingDeploymentSummary" not in desc and "FailureReason" not in desc
    assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert _routed(h, "live") == {g.address for g in green}  # traffic moved in one write
    assert h.serving("live", "Draining") == [blue] and blue.running

    h.traffic.busy[blue.address] = 1  # a request still in flight to the old instance: it drains
    h.clock.advance(5)
    h.step("live", 2)
    assert h.serving("live", "Draining") == [blue] and blue.running
    h.traffic.busy[blue.address] = 0
    h.step("live")
    wait_for(lambda: blue.stopped)
    assert h.record("live")["Draining"] == [] and all(g.running for g in green)


def test_update_endpoint_to_two_variants_with_weights(hosting: Hosting) -> None:
    h = hosting
    h.deploy("churn")
    h.model("churn-b")
    h.config("churn-ab", {"VariantName": "A", "ModelName": "churn", "InitialVariantWeight": 3.0},
             {"VariantName": "B", "ModelName": "churn-b", "InitialVariantWeight": 1.0})
    h.call("UpdateEndpoint", EndpointName="churn", EndpointConfigName="churn-ab")
    h.settle("churn")
    desc = h.describe("churn")
    assert desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == "churn-ab"
    assert [(v["VariantName"], v["CurrentWeight"], v["CurrentInstanceCount"]) for v in desc["ProductionVariants"]] \
        == [("A", 3.0, 1), ("B", 1.0, 1)]
    table = Table.of(h.record("churn"))
    assert [(v.name, v.weight, len(v.addresses)) for v in table.variants] == [("A", 3.0, 1), ("B", 1.0, 1)]


@pytest.mark.parametrize(("behaviour", "extra", "wait", "reason"), [
    ({"failure": "RuntimeError: boom: the weights are corrupt"}, {}, 0.0, "boom: the weights are corrupt"),
    ({"ready": False}, {"ContainerStartupHealthCheckTimeoutInSeconds": 60}, 61.0,
     "did not pass the ping health check within 60 seconds"),
    ({"missing": True}, {}, 0.0, "no such model data: file:///models/bad"),
], ids=["crash", "startup-timeout", "no-model-data"])
def test_a_failed_update_rolls_back_to_the_serving_config(
        hosting: Hosting, behaviour: dict[str, Any], extra: dict[str, Any], wait: float, reason: str) -> None:
    h = hosting
    h.deploy("steady")
    (blue,) = h.serving("steady")
    h.model("bad", **behaviour)
    h.config("bad", {"VariantName": "AllTraffic", "ModelName": "bad", **extra})
    h.call("UpdateEndpoint", EndpointName="steady", EndpointConfigName="bad")
    h.step("steady")
    green = h.serving("steady", "PendingInstances") if h.status("steady") == "Updating" else []
    if wait:
        h.step("steady", 2)
        assert h.status("steady") == "Updating" and _routed(h, "steady") == {blue.address}
        h.clock.advance(wait)
    h.settle("steady")
    desc = h.describe("steady")
    assert desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == "steady"
    assert desc["FailureReason"].startswith("Update to endpoint configuration failed: ")
    assert reason in desc["FailureReason"]
    assert "PendingDeploymentSummary" not in desc
    assert all(g.stopped for g in green) and h.record("steady")["PendingInstances"] == []
    assert h.serving("steady") == [blue] and blue.running and _routed(h, "steady") == {blue.address}
    h.call("UpdateEndpoint", EndpointName="steady", EndpointConfigName="steady")  # and it can be updated again
    h.settle("steady")
    assert h.status("steady") == "InService" and "FailureReason" not in h.describe("steady")


def test_update_weights_and_capacities_scales_up_and_down(hosting: Hosting) -> None:
    h = hosting
    h.model("a")
    h.model("b")
    h.config("ab", {"VariantName": "A", "ModelName": "a", "InitialVariantWeight": 3.0},
             {"VariantName": "B", "ModelName": "b", "InitialVariantWeight": 1.0})
    h.endpoint("ab")
    h.settle("ab")
    h.call("UpdateEndpointWeightsAndCapacities", EndpointName="ab", DesiredWeightsAndCapacities=[
        {"VariantName": "A", "DesiredWeight": 0.0}, {"VariantName": "B", "DesiredInstanceCount": 3}])
    desc = h.describe("ab")  # the desired values show at once, the current ones once they hold
    assert desc["EndpointStatus"] == "Updating"
    assert [(v["VariantName"], v["CurrentWeight"], v["DesiredWeight"], v["DesiredInstanceCount"])
            for v in desc["ProductionVariants"]] == [("A", 3.0, 0.0, 1), ("B", 1.0, 1.0, 3)]
    h.step("ab")
    assert len([f for f in h.serving("ab") if f.spec.variant == "B"]) == 3
    h.settle("ab")
    desc = h.describe("ab")
    assert desc["EndpointStatus"] == "InService"
    assert [(v["VariantName"], v["CurrentWeight"], v["DesiredWeight"], v["CurrentInstanceCount"])
            for v in desc["ProductionVariants"]] == [("A", 0.0, 0.0, 1), ("B", 1.0, 1.0, 3)]
    assert [(v.name, v.weight, len(v.addresses)) for v in Table.of(h.record("ab")).variants] \
        == [("A", 0.0, 1), ("B", 1.0, 3)]

    bs = [f for f in h.serving("ab") if f.spec.variant == "B"]
    h.call("UpdateEndpointWeightsAndCapacities", EndpointName="ab", DesiredWeightsAndCapacities=[
        {"VariantName": "B", "DesiredInstanceCount": 1}])
    h.step("ab")
    assert h.status("ab") == "InService"
    kept = [f for f in h.serving("ab") if f.spec.variant == "B"]
    assert kept == bs[:1] and h.serving("ab", "Draining") == bs[1:]  # the highest indexes go
    h.clock.advance(1)
    h.step("ab")
    wait_for(lambda: all(f.stopped for f in bs[1:]))
    assert h.counts("ab") == {"A": 1, "B": 1} and bs[0].running
