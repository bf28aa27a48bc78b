"""The suite's report: tables per model, the targets as checks, one throughput-vs-p99 chart per model."""

from __future__ import annotations

import os
from pathlib import Path

from bench.report import Check, checks_table, machine_summary, versions
from bench.suite import WINDOW_CAP_S, SuiteBenchmark
from bench.suite_systems import FLOOR, FLOOR_LABEL, MLSERVER_BATCH, SYSTEMS, WORKERS

VERSIONS = ("mainsail", "xgboost", "scikit-learn", "torch", "numpy", "starlette", "uvicorn", "uvloop", "httptools",
            "flask", "gunicorn", "fastapi", "matplotlib")
PEERS = ("flask", "fastapi", "mlserver-batch", "mlserver")
MLSERVER_REQUIREMENTS = Path(__file__).parent / "peers" / "mlserver_requirements.txt"
LATENCY_GAP_MS = 0.5
PEER_RATIO = 2.0
BATCHING_RATIO = 3.0
FLOOR_SHARE = 0.7
TAIL_RATIO = 3.0


def label(system: str) -> str:
    return FLOOR_LABEL if system == FLOOR else SYSTEMS[system].label


def suite_checks(bench: SuiteBenchmark) -> list[Check]:
    """The issue's targets, as ratios within this run."""
    checks = []
    floor, ms = bench.cell("tabular", FLOOR, 1, 1), bench.cell("tabular", "mainsail", 1, 1)
    name = "tabular, 1 record, concurrency 1: mainsail p50 − floor p50"
    if floor and ms:
        gap = ms.result.p50_ms - floor.result.p50_ms
        checks.append(Check(name, f"≤ {LATENCY_GAP_MS:g} ms", f"{ms.result.p50_ms:.3f} − {floor.result.p50_ms:.3f} "
                            f"= {gap:.3f} ms", gap <= LATENCY_GAP_MS and ms.errors == 0))
    else:
        checks.append(Check(name, f"≤ {LATENCY_GAP_MS:g} ms", "—", None))
    ms = bench.cell("tabular", "mainsail", 1, 16)
    peers = [c for c in (bench.cell("tabular", p, 1, 16) for p in PEERS) if c is not None]
    best = max(peers, key=lambda c: c.rps, default=None)
    name = "tabular, 1 record, concurrency 16: mainsail req/s ÷ best peer's"
    if ms and best and best.rps > 0:
        ratio = ms.rps / best.rps
        checks.append(Check(name, f"≥ {PEER_RATIO:g}×", f"{ms.rps:,.0f} ÷ {best.rps:,.0f} ({label(best.system)}) = "
                            f"{ratio:.2f}×", ratio >= PEER_RATIO and ms.errors == 0))
    else:
        checks.append(Check(name, f"≥ {PEER_RATIO:g}×", "—", None))
    ms, off = bench.cell("pytorch", "mainsail", 1, 16), bench.cell("pytorch", "mainsail-nobatch", 1, 16)
    name = "PyTorch, 1 record, concurrency 16: mainsail (batching) req/s ÷ batching off"
    if ms and off and off.rps > 0:
        ratio = ms.rps / off.rps
        checks.append(Check(name, f"≥ {BATCHING_RATIO:g}×", f"{ms.rps:,.0f} ÷ {off.rps:,.0f} = {ratio:.2f}×",
                            ratio >= BATCHING_RATIO and ms.errors == 0))
    else:
        checks.append(Check(name, f"≥ {BATCHING_RATIO:g}×", "—", None))
    batch = max(bench.records)
    floor = bench.cell("pytorch", FLOOR, batch, 1)
    name = (f"PyTorch, 1 record, concurrency 16: mainsail (batching) req/s ÷ in-process records/s "
            f"({batch} records a call, one thread per core)")
    if ms and floor and batch > 1:
        # The physical limit on this machine: the one-thread batched call on each of the workers' cores.
        records_s = floor.rps * batch * WORKERS
        share = ms.rps / records_s
        checks.append(Check(name, f"≥ {FLOOR_SHARE:.0%}", f"{ms.rps:,.0f} ÷ ({floor.rps * batch:,.0f} × {WORKERS} "
                            f"cores) = {share:.0%}", share >= FLOOR_SHARE and ms.errors == 0))
    else:
        checks.append(Check(name, f"≥ {FLOOR_SHARE:.0%}", "—", None))
    for model in bench.models:
        cell = bench.cell(model, "mainsail", 1, 16)
        name = f"{model}, 1 record, concurrency 16: mainsail p99 ÷ p50"
        if cell and cell.result.p50_ms > 0:
            ratio = cell.result.p99_ms / cell.result.p50_ms
            checks.append(Check(name, f"≤ {TAIL_RATIO:g}×", f"{cell.result.p99_ms:.2f} ÷ {cell.result.p50_ms:.2f} = "
                                f"{ratio:.2f}×", ratio <= TAIL_RATIO and cell.errors == 0))
        else:
            checks.append(Check(name, f"≤ {TAIL_RATIO:g}×", "—", None))
    return checks


def ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:,.1f}"


def results_table(bench: SuiteBenchmark, model: str) -> str:
    rows = ["| system | records / request | concurrency | p50 ms | p99 ms | req/s | records/s | errors | window s | "
            "other load, cores |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for system in [FLOOR, *bench.systems]:
        for records in bench.records:
            for concurrency in bench.concurrencies if system != FLOOR else [1]:
                cell = bench.cell(model, system, records, concurrency)
                if cell is None:
                    continue
                where = "1 (one thread)" if system == FLOOR else str(concurrency)
                rows.append(f"| {label(system)} | {records} | {where} | {ms(cell.result.p50_ms)} | "
                            f"{ms(cell.result.p99_ms)} | {cell.rps:,.0f} | {cell.rps * records:,.0f} | "
                            f"{cell.errors} | {cell.window_s:.3g} | {cell.other_cores:.2f} |")
    return "\n".join(rows)


def memory_table(bench: SuiteBenchmark, model: str) -> str:
    rows = ["| system | PSS MiB | RSS MiB | processes | ready after s |", "|---|---:|---:|---:|---:|"]
    for system in bench.systems:
        memory = bench.memory.get((model, system))
        if memory is not None:
            rows.append(f"| {label(system)} | {memory.pss_mib:,.0f} | {memory.rss_mib:,.0f} | {memory.processes} | "
                        f"{bench.ready_s[(model, system)]:.1f} |")
    return "\n".join(rows)


def skipped_text(bench: SuiteBenchmark, model: str) -> str:
    lines = [f"* **{label(system)} not measured**: {why}." for (m, system), why in bench.skipped.items()
             if m == model]
    return "\n".join(lines)


def replies_text(bench: SuiteBenchmark, model: str) -> str:
    """Each system's answer to one request (cut at 240 characters), to show that they agree."""
    lines = [f"{label(system):<30} {reply[:240]}" for (m, system), reply in bench.replies.items() if m == model]
    if not lines:
        return ""
    body = "\n".join(lines)
    return f"<details><summary>Each system's answer to the same record</summary>\n\n```\n{body}\n```\n\n</details>\n"


def write_chart(bench: SuiteBenchmark, model: str, path: Path) -> Path:
    """Throughput (x) vs p99 (y, log) per system, one panel per request size, a point per concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(bench.records), figsize=(6.2 * len(bench.records), 4.6), squeeze=False)
    for ax, records in zip(axes[0], bench.records, strict=True):
        for index, system in enumerate(bench.systems):
            cells = [c for c in (bench.cell(model, system, records, k) for k in bench.concurrencies) if c]
            if not cells:
                continue
            ax.plot([c.rps for c in cells], [c.result.p99_ms for c in cells], marker="o", color=f"C{index}",
                    label=label(system), linestyle="--" if system.startswith("mlserver") else "-")
            for c in cells:
                ax.annotate(f"c={c.concurrency}", (c.rps, c.result.p99_ms), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=f"C{index}")
        floor = bench.cell(model, FLOOR, records, 1)
        if floor is not None:
            ax.plot([floor.rps], [floor.result.p99_ms], marker="*", markersize=12, color="black", linestyle="",
                    label=f"{FLOOR_LABEL}, one thread")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2 × 10^1
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("throughput, requests/s")
        ax.set_ylabel("p99 latency, ms (log)")
        ax.set_title(f"{records} record{'s' if records > 1 else ''} per request")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{model}: throughput vs p99 ({WORKERS} workers each, {os.cpu_count()} cores shared with the client)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mlserver_pins() -> str:
    return ", ".join(line.strip() for line in MLSERVER_REQUIREMENTS.read_text().splitlines()
                     if line.strip() and not line.startswith("#"))


def render_suite_section(bench: SuiteBenchmark, charts: dict[str, Path], out: Path) -> str:
    quick = ("\n> **Quick smoke run**: measurements this short only show that the harness works; "
             "do not read the numbers.\n" if bench.quick else "")
    per_model = []
    for model in bench.models:
        chart = charts.get(model)
        image = f"\n![{model}: throughput vs p99]({os.path.relpath(chart, out.parent)})\n" if chart else ""
        notes = " ".join(bench.notes.get(model, []))
        per_model.append(f"""### {bench.titles.get(model, model)}

{notes}

{results_table(bench, model)}

{skipped_text(bench, model)}

Server memory after its cells (PSS and RSS summed over the server's process group):

{memory_table(bench, model)}
{image}
{replies_text(bench, model)}""")
    models_text = "\n".join(per_model)
    worst = max((c.other_cores for c in bench.cells), default=0.0)
    noise = f"up to {worst:.2f} in this run" + (", so treat its numbers with care." if worst >= 0.25 else ".")
    batch = ", ".join(f"`{k}` {v:g}" for k, v in MLSERVER_BATCH.items())
    heading = "Peer suite: mainsail vs Flask, FastAPI and MLServer on three models" if bench.section == "suite" \
        else f"Peer suite, the PyTorch demo at size {bench.pytorch_size}: {', '.join(bench.models)}"
    return f"""
## {heading}

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all).
{quick}
* **Machine**: {machine_summary()}.
* **Versions**: {versions(VERSIONS)}; MLServer from its own virtualenv (`scripts/peer-venv`): {mlserver_pins()}.

One measurement per cell: {bench.warmup_s:g} s of discarded warm-up, then {bench.duration_s:g} s measured ("window
s"); only requests that start and end inside the window count, so a cell whose requests are slow (guessed from
the floor: concurrency × floor p50 ÷ {WORKERS} workers) gets a window six such latencies long, up to
{WINDOW_CAP_S[bench.quick]:g} s. Latencies in milliseconds; "records/s" is req/s times the records in each request.

### Target checks

{checks_table(suite_checks(bench))}

{models_text}
### Method

* **Systems**, each with {WORKERS} workers, `OMP_NUM_THREADS=1`, the peers' access logs off (mainsail's is on,
  as by default), on a free loopback port, one server at a time (started, measured, memory read, stopped with SIGTERM):
  * **in-process floor**: the handler `mainsail serve` runs for the model (`mainsail.handlers.build_handler`),
    loaded in the benchmark process and `invoke`d on the same body back to back in one thread (PyTorch with
    `torch.set_num_threads(1)`);
  * **mainsail (default)**: `mainsail serve DIR --workers {WORKERS}`, every other setting at its default
    (the log level and adaptive batching included, where the handler batches); **mainsail, batching off**: the same with
    `MAINSAIL_BATCHING=off`;
  * **Flask + gunicorn sync** (`bench/peers/flask_app.py`) and **FastAPI + uvicorn** (`bench/peers/fastapi_app.py`:
    an `async def /invocations` calling the handler chain on the event loop; uvloop, httptools,
    `--no-access-log`), both serving the model's `code/inference.py`: for the built-in models that is
    `bench/models/handler_inference.py`, which calls mainsail's own handler, so only the server differs;
  * **MLServer** 1.7 with its stock XGBoost / scikit-learn runtime, `parallel_workers: {WORKERS}`, `debug: false`,
    with adaptive batching ({batch}) and without. It speaks the V2 inference protocol: `POST
    /v2/models/NAME/infer` with a JSON body `{{"inputs": [{{"name": "input-0", "shape": [N, F], "datatype":
    "FP32", "data": [...]}}], "outputs": [{{"name": "predict_proba"}}]}}`, and answers a V2 JSON tensor of
    probabilities (no calibration, no reference layout).
* **Load**: `bench/loadgen.py`, a closed-loop HTTP/1.1 client in its own process (keep-alive, uvloop); only
  requests that start and end in the window count; errors are non-2xx answers, socket errors and 10 s time-outs.
* **Noise**: client and servers share the machine's {os.cpu_count()} cores, so every throughput figure is "the
  cores minus the load generator"; read differences under about 10 % as noise. "other load" is the CPU that
  processes other than the benchmark's own used during the cell, in cores: {noise}
"""


def write_report(bench: SuiteBenchmark, out: Path, img_dir: Path) -> dict[str, Path]:
    """One chart per model under ``img_dir``, and the ``suite`` section of ``out``; returns the charts."""
    from bench.report import write_section

    prefix = bench.section
    charts = {model: write_chart(bench, model, img_dir / f"{prefix}-{model}.png") for model in bench.models}
    write_section(out, prefix, render_suite_section(bench, charts, out))
    return charts


def console_text(bench: SuiteBenchmark) -> str:
    """The tables and checks, as printed at the end of a run."""
    parts = []
    for model in bench.models:
        parts += [f"{model}: {bench.titles.get(model, model)}", results_table(bench, model), "",
                  memory_table(bench, model), skipped_text(bench, model), ""]
    for check in suite_checks(bench):
        parts.append(f"{check.name}: {check.measured} (target {check.target}): {check.verdict.strip('*')}")
    return "\n".join(parts)
