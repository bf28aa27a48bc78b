"""What only the local backend does, on small real processes (no ``mainsail serve``): the reason it
gives for an instance that was killed, the memory of an instance's whole process group, and the
transport it hands the control plane. The state machine around them is tested on the in-memory
backend (tests/hosting/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from mainsail.backends.base import Address, Instance
from mainsail.backends.http_transport import HttpTransport
from mainsail.backends.local import LocalBackend

HOLD = """
import subprocess, sys, time
held = b"x" * ({mb} * 2**20)
if {child}:  # a process of the same group, holding memory too
    subprocess.Popen([sys.executable, "-c", {again!r}], stdout=subprocess.PIPE).stdout.readline()
print("ready", flush=True)
time.sleep(60)
"""


def _spawn(mb: int, child_mb: int = 0) -> subprocess.Popen[bytes]:
    child = HOLD.format(mb=child_mb, child=False, again="")
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(mb=mb, child=bool(child_mb), again=child)],
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_failure_names_the_exit_of_a_killed_instance_and_its_last_log_lines(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    log = tmp_path / "instance.log"
    log.write_text("starting\nserving on 127.0.0.1:1\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    backend._procs[proc.pid] = proc  # as start() records the processes it started
    instance = Instance(variant="v", pid=proc.pid, port=1, log_path=str(log))
    try:
        assert backend.failure(instance) is None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert backend.failure(instance) == \
            "Instance of variant v exited with code -9: starting\nserving on 127.0.0.1:1"
    finally:
        backend.stop(instance)


def test_memory_is_the_whole_process_group(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    proc = _spawn(mb=80, child_mb=100)
    instance = Instance(variant="v", pid=proc.pid, port=1, log_path="")
    try:
        used = backend.memory_bytes(instance)
        assert used is not None and used > 180 * 2**20  # neither process alone holds that much
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_the_transport_is_one_http_transport_and_ping_needs_an_answer(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    assert isinstance(backend.transport(), HttpTransport) and backend.transport() is backend.transport()
    old = {"variant": "v", "pid": 1, "port": 9, "log_path": ""}  # a record written before hosts were
    assert Instance.from_record(old).address == Address("127.0.0.1", 9)
    assert Instance.from_record(Instance.from_record(old).to_record()) == Instance.from_record(old)
    assert not backend.healthy(Instance.from_record(old))  # nothing listens there
