"""The pieces of ``python -m bench profile`` and the wrk wrapper that need no server: the stack classifier,
the CPU attribution, the section's merge of runs, py-spy's attach failure, and the wrk report parser.

No live py-spy run here: attaching to another process needs ptrace, which CI machines grant or refuse
depending on their set-up, and a test that skips on that would hide a real breakage.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench import profile, profile_report, stacks, wrk  # noqa: E402
from bench.stacks import (  # noqa: E402
    ACCESS_LOG,
    HANDOFF,
    HTTP,
    INVOCATION,
    LOOP,
    METRICS,
    MODEL_INPUT,
    MODEL_LIBS,
    MODEL_OUTPUT,
    MODEL_PREDICT,
    NATIVE,
    OTHER,
    PROFILER,
    attribute,
    bucket_samples,
    classify,
    parse_raw,
)

SITE = "/work/main/.venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"
LOOP_ROOT = (f"thread (4242): MainThread;<module> (/venv/bin/mainsail:6);run (/repo/src/mainsail/serve/worker_process.py:123);"
             f"run ({SITE}/uvicorn/server.py:86);run ({STDLIB}/asyncio/runners.py:118)")
EXECUTOR_ROOT = (f"thread (4243): mainsail-predict_0;_bootstrap ({STDLIB}/threading.py:1002);"
                 f"_worker ({STDLIB}/concurrent/futures/thread.py:83);run ({STDLIB}/concurrent/futures/thread.py:58);"
                 "_call (/repo/src/mainsail/serve/runtime.py:150);invoke (/repo/src/mainsail/handlers/script.py:173)")
# Collapsed stacks as ``py-spy record -f raw --threads --full-filenames`` writes them (frames root -> leaf, count).
RAW = "\n".join([
    f"{EXECUTOR_ROOT};input_fn (/tmp/m/code/inference.py:23);genfromtxt ({SITE}/numpy/lib/_npyio_impl.py:2452) 40",
    f"{EXECUTOR_ROOT};predict_fn (/tmp/m/code/inference.py:31);inplace_predict ({SITE}/xgboost/core.py:2700) 50",
    f"{EXECUTOR_ROOT};output_fn (/tmp/m/code/inference.py:35);dumps ({STDLIB}/json/__init__.py:231) 5",
    # a frame of the script anywhere wins, even under frames another rule would match
    f"{EXECUTOR_ROOT};predict_fn (/tmp/m/code/inference.py:31);acquire ({STDLIB}/threading.py:100) 5",
    f"{LOOP_ROOT};data_received ({SITE}/uvicorn/protocols/http/httptools_impl.py:210) 20",
    f"{LOOP_ROOT};__call__ (/repo/src/mainsail/serve/app.py:98);send_response (/repo/src/mainsail/serve/http.py:40);"
    f"send ({SITE}/uvicorn/protocols/http/httptools_impl.py:480) 10",
    f"{LOOP_ROOT};__call__ (/repo/src/mainsail/serve/app.py:98);invoke (/repo/src/mainsail/serve/runtime.py:101) 6",
    f"{LOOP_ROOT};__call__ (/repo/src/mainsail/serve/app.py:98);invoke (/repo/src/mainsail/serve/runtime.py:101);"
    f"submit ({STDLIB}/concurrent/futures/thread.py:170) 4",
    f"{LOOP_ROOT};__call__ (/repo/src/mainsail/serve/app.py:110);add (/repo/src/mainsail/serve/access_log.py:44);"
    f"info ({STDLIB}/logging/__init__.py:1477) 3",
    f"{LOOP_ROOT};__call__ (/repo/src/mainsail/serve/app.py:110);record (/repo/src/mainsail/serve/metrics.py:50) 2",
    f"{LOOP_ROOT} 7",  # in uvloop's C code: no frame of its own
    # --nonblocking lost the outer frames, the script's among them
    f"thread (4243): mainsail-predict_0;get_config ({SITE}/xgboost/config.py:120) 3",
    "thread (4243): mainsail-predict_0;_gc_timer (/tmp/x/site/sitecustomize.py:9) 1",
    " 2",  # an empty stack
    "not a stack line",
])


def _buckets(text: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for counts in bucket_samples(text).values():
        total += counts
    return total


def test_classifier_sorts_synthetic_stacks_into_their_buckets() -> None:
    assert _buckets(RAW) == {MODEL_INPUT: 40, MODEL_PREDICT: 55, MODEL_OUTPUT: 5, HTTP: 30, INVOCATION: 6,
                             HANDOFF: 4, ACCESS_LOG: 3, METRICS: 2, LOOP: 7, MODEL_LIBS: 3, PROFILER: 1, OTHER: 2}
    by_thread = bucket_samples(RAW)
    assert set(by_thread) == {4242, 4243, None}
    assert by_thread[4243][MODEL_INPUT] == 40 and by_thread[4242][HTTP] == 30


def test_classifier_reads_short_file_names_too() -> None:
    # without --full-filenames py-spy shortens paths to the package part
    frames = [frame for _, frames, _ in parse_raw(
        "_worker (concurrent/futures/thread.py:83);run (concurrent/futures/thread.py:58);"
        "_call (mainsail/serve/runtime.py:146);__call__ (mainsail/handlers/script.py:60);input_fn (inference.py:23) 1")
        for frame in frames]
    assert classify(frames) == MODEL_INPUT
    assert classify(frames[:-1]) == stacks.HANDLER
    assert classify(frames[:2]) == HANDOFF
    assert classify(frames, script="other.py") == stacks.HANDLER
    assert classify([]) == OTHER


def test_attribute_splits_each_threads_cpu_by_its_own_samples() -> None:
    samples = {1: Counter({HTTP: 3, LOOP: 1}), 2: Counter({MODEL_PREDICT: 10})}
    # thread 1 was sampled less than thread 2 but used more CPU: its CPU, not its sample count, weighs
    shares = attribute(samples, {1: 0.8, 2: 0.2, 3: 0.05})
    assert shares == pytest.approx({HTTP: 0.6, LOOP: 0.2, MODEL_PREDICT: 0.2, NATIVE: 0.05})


def _run(label: str, system: str = "mainsail", us: float = 100.0) -> profile_report.ProfileRun:
    return profile_report.ProfileRun(
        label=label, system=system, started="2026-01-01 00:00 UTC", command="python -m bench profile",
        source="the installed mainsail", concurrency=16, duration_s=1.0, loadgen="wrk", sampling="GIL holder only",
        rate=400, requests=1000, rps=1000.0, p50_ms=1.0, errors=0, workers=2, worker_cpu_s=us * 1e-3,
        bucket_cpu_s={HTTP: us * 0.4e-3, MODEL_PREDICT: us * 0.6e-3}, samples=100, spy_errors=0,
        supervisor_cpu_s=0.001, supervisor_buckets={LOOP: 2}, gc_s=0.002, gc_collections=50,
        hot_leaves={HTTP: ["send (httptools_impl.py) ×9"]})


def test_profile_section_keeps_other_labels_with_append_and_replaces_the_same_label(tmp_path: Path) -> None:
    from bench.report import write_section

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:serve:start -->\nkept\n<!-- bench:serve:end -->\n")
    assert profile_report.read_runs(out) == []
    write_section(out, "profile", profile_report.render_section([_run("before"), _run("before", "bare-asgi")]))
    after = profile_report.merge(profile_report.read_runs(out), [_run("after", us=80.0)])
    write_section(out, "profile", profile_report.render_section(after))
    again = profile_report.merge(profile_report.read_runs(out), [_run("after", us=60.0)])
    write_section(out, "profile", profile_report.render_section(again))

    text = out.read_text()
    assert "kept" in text and text.count(profile_report.TITLE) == 1
    runs = profile_report.read_runs(out)
    assert [r.key for r in runs] == [("before", "mainsail"), ("before", "bare-asgi"), ("after", "mainsail")]
    assert runs[-1].cpu_us == pytest.approx(60.0)
    header = next(line for line in text.splitlines() if line.startswith("| CPU µs per request"))
    assert header.endswith("| before: mainsail serve | before: bare ASGI app on uvicorn | after: mainsail serve |")
    assert f"| {HTTP} | 40.0 (40.0 %) | 40.0 (40.0 %) | 24.0 (40.0 %) |" in text
    table = profile_report.console_table(runs[0])
    assert f"| {MODEL_PREDICT} | 60.0 | 60.0 |" in table and "| **all worker CPU** | 100.0 | 100.0 |" in table


def test_a_py_spy_that_cannot_attach_fails_with_a_clear_message(tmp_path: Path) -> None:
    fake = tmp_path / "py-spy"
    fake.write_text("#!/bin/sh\necho 'Error: Permission Denied: Try running again with elevated permissions' >&2\n"
                    "exit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "spy-1.txt"
    process = profile._start_spy(str(fake), os.getpid(), out, rate=400, gil=True)
    process.wait(10)
    with pytest.raises(RuntimeError, match=r"(?s)could not attach to process .*Permission Denied.*ptrace"):
        profile._wait_sampling([(os.getpid(), process, out)], timeout_s=5)


def test_worker_pids_are_the_children_of_the_supervisor() -> None:
    code = ("import subprocess, sys, time\n"
            "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']) for _ in range(2)]\n"
            "print(' '.join(str(k.pid) for k in kids), flush=True)\ntime.sleep(30)\n")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                          start_new_session=True) as parent:
        try:
            assert parent.stdout is not None
            kids = sorted(int(pid) for pid in parent.stdout.readline().split())
            assert profile.worker_pids(parent.pid) == kids
            assert all(profile.thread_cpu_s(pid) for pid in kids)
        finally:
            os.killpg(parent.pid, 9)


# Captured from `wrk -t1 -c16 -d6s --latency -s post.lua http://127.0.0.1:18080/invocations` against
# `mainsail serve` on the benchmark model, and the same script against a path that answers 404.
WRK_OK = """Running 6s test @ http://127.0.0.1:18080/invocations
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     8.52ms    5.16ms  55.46ms   88.00%
    Req/Sec     2.00k   224.21     2.47k    68.33%
  Latency Distribution
     50%    7.67ms
     75%    9.30ms
     90%   13.72ms
     99%   30.79ms
  11941 requests in 6.00s, 1.66MB read
Requests/sec:   1989.63
Transfer/sec:    283.68KB
"""
WRK_404 = """Running 1s test @ http://127.0.0.1:18080/nothing-here
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.41ms    2.83ms  21.28ms   87.01%
    Req/Sec     2.36k   705.29     3.72k    70.00%
  Latency Distribution
     50%    1.22ms
     75%    3.36ms
     90%    5.90ms
     99%   13.57ms
  2358 requests in 1.01s, 446.99KB read
  Non-2xx or 3xx responses: 2358
Requests/sec:   2343.52
Transfer/sec:    444.24KB
"""


def test_wrk_report_is_parsed_into_a_load_result() -> None:
    result = wrk.parse_wrk_output(WRK_OK, 16, client_cpu_s=0.5)
    assert (result.requests, result.errors, result.concurrency, result.connections_opened) == (11941, 0, 16, -1)
    assert result.duration_s == pytest.approx(6.0) and result.rps == pytest.approx(11941 / 6.0)
    assert (result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms) == pytest.approx((7.67, 13.72, 30.79, 55.46))
    assert result.client_cpu_us_per_req == pytest.approx(0.5 / 11941 * 1e6)

    failed = wrk.parse_wrk_output(WRK_404, 4)
    assert failed.errors == 2358 and failed.error_samples == ["Non-2xx or 3xx responses: 2358"]
    assert failed.p50_ms == pytest.approx(1.22) and failed.client_cpu_us_per_req == 0.0

    # the socket errors line (edited into the capture: wrk prints it only when one happened), in µs and s units
    edited = (WRK_OK.replace("  11941 requests", "  Socket errors: connect 0, read 3, write 0, timeout 2\n  11941 requests")
              .replace("55.46ms", "1.20s").replace("7.67ms", "950.00us"))
    odd = wrk.parse_wrk_output(edited, 16)
    assert odd.errors == 5 and odd.max_ms == pytest.approx(1200.0) and odd.p50_ms == pytest.approx(0.95)

    with pytest.raises(ValueError, match="not a wrk"):
        wrk.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused", 2)


def test_wrk_script_posts_the_body_file_with_its_content_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = wrk.lua_script(tmp_path / 'a "b".csv', "text/csv")
    assert 'wrk.method = "POST"' in script and 'wrk.headers["Content-Type"] = "text/csv"' in script
    assert '\\"b\\".csv' in script
    assert wrk.wrk_argv("http://h/x", tmp_path / "s.lua", concurrency=16, duration_s=0.3)[1:4] == ["-t1", "-c16", "-d1s"]
    monkeypatch.setattr(wrk.shutil, "which", lambda name: None)
    assert wrk.choose_loadgen("auto") == "python"
    with pytest.raises(RuntimeError, match="wrk is not on the PATH"):
        wrk.choose_loadgen("wrk")
    monkeypatch.setattr(wrk.shutil, "which", lambda name: "/usr/bin/wrk")
    assert wrk.choose_loadgen("auto") == "wrk" and wrk.choose_loadgen("python") == "python"
