"""The reconciler's state machine on the in-memory backend, stepped by hand on a fake clock: create,
fail to start, replace a crashed instance (and give up after three), scale to zero and back, stop an
instance over its memory, delete, and recover after a restart. No process, no socket, no sleep."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mainsail.aws.errors import ValidationException
from mainsail.backends.base import LOOPBACK, InstanceSpec
from mainsail.hosting.reconciler import Reconciler
from tests.fakes import PORT
from tests.hosting.harness import Hosting, StubTraffic, wait_for

SERVERLESS = {"MemorySizeInMB": 1024, "MaxConcurrency": 2}


@pytest.fixture
def hosting(tmp_path: Path) -> Iterator[Hosting]:
    h = Hosting(tmp_path, serverless_idle=60.0)
    yield h
    h.close()


def test_create_goes_in_service_once_every_instance_answers(hosting: Hosting) -> None:
    h = hosting
    h.model("m", ready=False)
    h.config("m", {"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 2})
    h.endpoint("m")
    assert h.status("m") == "Creating"
    h.step("m")
    fakes = h.serving("m")
    assert len(fakes) == 2 and h.status("m") == "Creating"
    # instances are known by host and port: these share a port, each on a host of its own
    assert len({f.address for f in fakes}) == 2 and {f.address.port for f in fakes} == {PORT}
    assert all(item["host"] != LOOPBACK for item in h.record("m")["Instances"])
    fakes[0].ready = True
    h.step("m", 3)
    assert h.status("m") == "Creating"  # one of two answers /ping
    fakes[1].ready = True
    h.step("m")
    assert h.status("m") == "InService"
    assert h.counts("m") == {"AllTraffic": 2}
    assert all(item["ready"] for item in h.record("m")["Instances"])
    h.step("m", 3)
    assert len(h.backend.instances) == 2  # nothing was started again


def test_an_instance_that_never_answers_fails_the_endpoint_after_its_startup_timeout(hosting: Hosting) -> None:
    h = hosting
    h.model("slow", ready=False)
    h.config("slow", {"VariantName": "AllTraffic", "ModelName": "slow",
                      "ContainerStartupHealthCheckTimeoutInSeconds": 60})
    h.endpoint("slow")
    h.step("slow")
    (fake,) = h.serving("slow")
    h.clock.advance(59)
    h.step("slow", 3)
    assert h.status("slow") == "Creating" and fake.running
    h.clock.advance(2)
    h.step("slow")
    desc = h.describe("slow")
    assert desc["EndpointStatus"] == "Failed"
    assert "did not pass the ping health check within 60 seconds" in desc["FailureReason"]
    assert fake.stopped and h.record("slow")["Instances"] == []


@pytest.mark.parametrize(("behaviour", "reason"), [
    ({"failure": "RuntimeError: boom: the weights are corrupt"}, "boom: the weights are corrupt"),
    ({"missing": True}, "no such model data: file:///models/broken"),
])
def test_a_model_that_cannot_start_fails_the_endpoint_with_the_reason(
        hosting: Hosting, behaviour: dict[str, object], reason: str) -> None:
    h = hosting
    h.model("broken", **behaviour)
    h.config("broken", {"VariantName": "AllTraffic", "ModelName": "broken"})
    h.endpoint("broken")
    h.settle("broken")
    desc = h.describe("broken")
    assert desc["EndpointStatus"] == "Failed"
    assert reason in desc["FailureReason"]
    assert h.backend.running("broken") == []
    h.call("DeleteEndpoint", EndpointName="broken")  # a Failed endpoint can be deleted
    h.step("broken")
    with pytest.raises(ValidationException, match="Could not find endpoint"):
        h.describe("broken")


def test_a_crashed_instance_is_replaced(hosting: Hosting) -> None:
    h = hosting
    h.deploy("phoenix")
    (old,) = h.serving("phoenix")
    old.crash("killed")
    h.step("phoenix")
    assert old.stopped and h.status("phoenix") == "InService"
    (new,) = h.serving("phoenix")
    assert new is not old and new.address != old.address
    h.settle("phoenix")
    assert h.status("phoenix") == "InService"
    assert h.record("phoenix")["Instances"][0]["ready"]
    assert h.counts("phoenix") == {"AllTraffic": 1}


def test_three_failed_replacements_in_a_row_fail_the_endpoint(hosting: Hosting) -> None:
    h = hosting
    h.deploy("flaky")
    h.backend.models["file:///models/flaky"].failure = "RuntimeError: out of luck"  # replacements die at once
    (first,) = h.serving("flaky")
    first.crash()
    h.step("flaky")  # replaced: it had served, so this is no strike
    for _ in range(2):
        h.step("flaky")  # the replacement exited before it answered: a strike, and another replacement
        assert h.status("flaky") == "InService"
    h.step("flaky")
    desc = h.describe("flaky")
    assert desc["EndpointStatus"] == "Failed"
    assert "out of luck" in desc["FailureReason"] and "(after 3 replacements)" in desc["FailureReason"]
    assert len(h.backend.instances) == 4 and h.backend.running("flaky") == []


def test_a_serverless_variant_scales_to_zero_when_idle_and_back_on_use(hosting: Hosting) -> None:
    h = hosting
    h.model("sls")
    h.config("sls", {"VariantName": "AllTraffic", "ModelName": "sls", "ServerlessConfig": SERVERLESS})
    h.endpoint("sls")
    h.settle("sls")
    assert h.status("sls") == "InService" and h.counts("sls") == {"AllTraffic": 1}  # the model was checked
    (checker,) = h.serving("sls")
    h.clock.advance(59)
    h.step("sls", 2)
    assert h.serving("sls") == [checker]
    h.clock.advance(2)  # idle for the serverless idle time
    h.step("sls")
    assert h.record("sls")["Instances"] == [] and h.counts("sls") == {"AllTraffic": 0}
    h.clock.advance(1)
    h.step("sls")  # drained (nothing in flight) and stopped
    wait_for(lambda: checker.stopped)
    assert h.record("sls")["Draining"] == []

    key = ("sls", "AllTraffic")
    h.traffic.variant_busy[key] = 1  # a request waits for a cold start (the router's lease)
    h.traffic.used[key] = h.clock.monotonic()
    h.step("sls")
    (cold,) = h.serving("sls")
    assert cold is not checker
    h.settle("sls")
    assert h.counts("sls") == {"AllTraffic": 1}
    h.traffic.variant_busy[key] = 0
    h.traffic.used[key] = h.clock.monotonic()
    h.clock.advance(30)
    h.step("sls")
    assert h.serving("sls") == [cold]  # used 30 s ago: stays
    h.clock.advance(31)
    h.step("sls")
    assert h.record("sls")["Instances"] == []


def test_a_serverless_instance_over_its_memory_is_stopped_noted_and_replaced(hosting: Hosting) -> None:
    h = hosting
    h.model("tight")
    h.config("tight", {"VariantName": "AllTraffic", "ModelName": "tight", "ServerlessConfig": SERVERLESS})
    h.endpoint("tight")
    h.settle("tight")
    (greedy,) = h.serving("tight")
    greedy.memory = 900 * 2**20
    h.step("tight", 2)
    assert h.serving("tight") == [greedy]  # within MemorySizeInMB
    greedy.memory = 1400 * 2**20
    h.step("tight")
    assert greedy.stopped
    assert "over the variant's MemorySizeInMB (1024 MB)" in h.traffic.notes[greedy.address]  # told to its requests
    h.settle("tight")
    (fresh,) = h.serving("tight")
    assert fresh is not greedy and h.status("tight") == "InService" and h.counts("tight") == {"AllTraffic": 1}


def test_delete_stops_every_instance_serving_or_starting(hosting: Hosting) -> None:
    h = hosting
    h.deploy("gone", count=2)
    h.model("gone-v2", ready=False)
    h.config("gone-v2", {"VariantName": "AllTraffic", "ModelName": "gone-v2"})
    h.call("UpdateEndpoint", EndpointName="gone", EndpointConfigName="gone-v2")
    h.step("gone")
    assert len(h.serving("gone")) == 2 and len(h.serving("gone", "PendingInstances")) == 1
    h.call("DeleteEndpoint", EndpointName="gone")
    assert h.status("gone") == "Deleting"
    h.step("gone")
    assert h.store.get("endpoint", "gone") is None
    assert len(h.backend.instances) == 3 and h.backend.running() == []


def test_a_restart_adopts_running_instances_restarts_dead_ones_and_reaps_orphans(hosting: Hosting) -> None:
    h = hosting
    for name in ("keep", "revive", "lost"):
        h.deploy(name)
    (keep,), (revive,), (lost,) = (h.serving(name) for name in ("keep", "revive", "lost"))
    orphan = h.backend.of(h.backend.start(InstanceSpec("ghost", "AllTraffic", 0, "file:///models/ghost")))
    # while no control plane runs: one instance dies; another dies and its model data disappears
    revive.crash()
    lost.crash()
    h.backend.models["file:///models/lost"].missing = True
    second = Reconciler(h.store, h.backend, traffic=StubTraffic(), clock=h.clock)  # the next control plane
    second.recover()
    assert orphan.stopped and keep.running
    assert h.serving("keep") == [keep]  # adopted, not restarted
    assert h.record("revive")["Instances"] == []  # forgotten, to be started again
    for _ in range(4):
        second.step_all()
    assert h.serving("keep") == [keep] and h.status("keep") == "InService"
    (revived,) = h.serving("revive")
    assert revived is not revive and h.status("revive") == "InService"
    desc = h.describe("lost")
    assert desc["EndpointStatus"] == "Failed" and "file:///models/lost" in desc["FailureReason"]


def test_list_endpoints_sorts_and_filters_by_status_before_paging(hosting: Hosting) -> None:
    h = hosting
    h.deploy("up")  # InService
    h.model("broken", missing=True)
    h.config("broken", {"VariantName": "AllTraffic", "ModelName": "broken"})
    h.endpoint("broken")
    h.settle("broken")  # Failed
    h.config("new", {"VariantName": "AllTraffic", "ModelName": "up"})
    h.endpoint("new")  # Creating: never stepped
    listed = h.call("ListEndpoints", SortBy="Status", SortOrder="Ascending")["Endpoints"]
    assert [(e["EndpointName"], e["EndpointStatus"]) for e in listed] == [
        ("new", "Creating"), ("broken", "Failed"), ("up", "InService")]
    page = h.call("ListEndpoints", SortBy="Status", SortOrder="Descending", StatusEquals="Failed", MaxResults=1)
    assert [e["EndpointName"] for e in page["Endpoints"]] == ["broken"] and "NextToken" not in page
