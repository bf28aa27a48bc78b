"""``python -m fuzz list`` | ``run [TARGET ...] (--runs N | --seconds S) [...] [-- LIBFUZZER_FLAGS]`` |
``replay TARGET FILE ...``.

``run`` imports the targets once (under atheris's instrumentation of ``mainsail``), then forks one child
per target, ``--jobs`` at a time; each runs libFuzzer (or, without atheris, a seeded random mutator)
from the target's generated seeds, the crash inputs kept in ``fuzz/corpus/<target>/`` and the corpus it
grew before (``<workdir>/corpus/<target>/``). A crash is written to ``<workdir>/crashes/<target>/``; a
child's output goes to ``<workdir>/logs/<target>.log``. The exit status is 1 when any target failed.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# one thread of native compute per target (set before numpy loads): the children share the machine
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

from fuzz import Target, load_targets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = Path(__file__).resolve().parent / "corpus"


@dataclass
class Result:
    target: str
    ok: bool
    runs: int
    seconds: float
    engine: str
    crashes: list[str]
    log_tail: str


def _load(engine: str) -> dict[str, Target]:
    if engine != "atheris":
        return load_targets()
    import atheris

    with atheris.instrument_imports(include=["mainsail"]):
        return load_targets()


def _engine(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "random"
    return "atheris"


def _child(target: Target, args: argparse.Namespace, engine: str, work: Path) -> None:
    """In the forked child: seeds, then the engine; never returns."""
    log = os.open(work / "logs" / f"{target.name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    status = 1
    try:
        scratch = work / "scratch" / target.name
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        os.environ["MAINSAIL_FUZZ_SCRATCH"] = str(scratch)
        seeds, corpus, crashes = (work / d / target.name for d in ("seeds", "corpus", "crashes"))
        shutil.rmtree(seeds, ignore_errors=True)
        for directory in (seeds, corpus, crashes):
            directory.mkdir(parents=True, exist_ok=True)
        for seed in target.seeds():
            (seeds / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        dirs = [corpus, seeds] + ([REGRESSIONS / target.name] if (REGRESSIONS / target.name).is_dir() else [])
        if engine == "atheris":
            import atheris

            flags = [f"-seed={args.seed}", f"-max_len={target.max_len}", f"-artifact_prefix={crashes}/",
                     f"-timeout={args.timeout}", "-rss_limit_mb=3072"]
            atheris.Setup([sys.argv[0], *flags, *args.libfuzzer, *map(str, dirs)],
                          _bounded(target.run, args.runs, args.seconds))
            try:
                atheris.Fuzz()
            except SystemExit as exc:  # atheris's way out after a crash: libFuzzer's exit handler
                sys.stdout.flush()  # writes the input, so leave through C's exit(), which runs it
                sys.stderr.flush()
                ctypes.CDLL(None).exit(exc.code if isinstance(exc.code, int) else 1)
        status = _random_engine(target, args, dirs, crashes)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _bounded(run: Callable[[bytes], None], runs: int | None, seconds: int | None) -> Callable[[bytes], None]:
    """``run``, counting its inputs: after ``runs`` of them (or ``seconds``) the process leaves at once.
    (libFuzzer's own -runs / -max_total_time end in C's exit(), whose destructors can hang in a forked
    child: pyarrow's thread pool, for one.)"""
    deadline = time.monotonic() + seconds if seconds else float("inf")
    count = 0

    def bounded(data: bytes) -> None:
        nonlocal count
        if (runs and count >= runs) or time.monotonic() >= deadline:
            print(f"Done {count} runs\nstat::number_of_executed_units: {count}", flush=True)
            os._exit(0)
        count += 1
        run(data)

    return bounded


def _mutate(rng: random.Random, data: bytes, pool: list[bytes], max_len: int) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        at = rng.randint(0, len(out))
        if choice == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[min(at, len(out) - 1)] = rng.choice(b"\0\1\x7f\x80\xff\"'<>&;:,\n\r\\[]{}0")
        elif choice == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 3:
            del out[at:at + rng.randint(1, 16)]
        elif choice == 4 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start:start + rng.randint(1, 64)]
        elif pool:
            other = rng.choice(pool)
            out[at:] = other[rng.randint(0, len(other)):]
    return bytes(out[:max_len])


def _random_engine(target: Target, args: argparse.Namespace, dirs: list[Path], crashes: Path) -> int:
    """A seeded mutation loop (no coverage feedback) where atheris is not installed."""
    pool = [p.read_bytes() for d in dirs for p in sorted(d.iterdir()) if p.is_file()] or [b""]
    rng = random.Random(args.seed)
    deadline = time.monotonic() + (args.seconds or float("inf"))
    runs = 0
    mutated = (_mutate(rng, rng.choice(pool), pool, target.max_len) for _ in itertools.count())
    for data in itertools.chain(pool, mutated):
        if (args.runs and runs >= args.runs) or time.monotonic() > deadline:
            break
        runs += 1
        try:
            target.run(data)
        except Exception:
            path = crashes / f"crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"==ERROR: uncaught exception; input written to {path}")
            print(f"stat::number_of_executed_units: {runs}")
            return 1
    print(f"stat::number_of_executed_units: {runs}")
    return 0


def _result(name: str, status: int, seconds: float, engine: str, work: Path) -> Result:
    text = (work / "logs" / f"{name}.log").read_text(errors="replace")
    if status == -signal.SIGKILL:
        text += "\n(killed: the child ran past its time limit)"
    runs = re.findall(r"stat::number_of_executed_units: (\d+)", text) or re.findall(r"^#(\d+)", text, re.M)
    crashes = sorted(str(p) for p in (work / "crashes" / name).glob("*") if p.is_file())
    ok = status == 0 and not crashes
    return Result(name, ok, int(runs[-1]) if runs else 0, round(seconds, 2), engine, crashes,
                  "" if ok else text[-4000:])


def run(args: argparse.Namespace) -> int:
    engine = _engine(args.engine)
    targets = _load(engine)
    names = args.targets or list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        print(f"unknown target(s): {', '.join(unknown)}; see python -m fuzz list", file=sys.stderr)
        return 2
    work = Path(args.workdir).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.rmtree(work / "crashes" / name, ignore_errors=True)
    running: dict[int, tuple[str, float]] = {}
    results: list[Result] = []
    pending = list(names)
    limit = (args.seconds + 120) if args.seconds else 600  # a child past it is killed: it hung
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(targets[name], args, engine, work)
            running[pid] = (name, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for late, (_, started) in running.items():
                if time.monotonic() - started > limit:
                    os.kill(late, signal.SIGKILL)
            time.sleep(0.05)
            continue
        name, started = running.pop(pid)
        result = _result(name, os.waitstatus_to_exitcode(status), time.monotonic() - started, engine, work)
        results.append(result)
        print(f"{name:16} {'ok' if result.ok else 'FAILED':6} {result.runs:>9} runs {result.seconds:8.1f} s"
              + "".join(f"\n    crash: {c}" for c in result.crashes), flush=True)
        if not result.ok:
            print(result.log_tail[-1500:], flush=True)
    shutil.rmtree(work / "scratch", ignore_errors=True)
    if args.summary:
        Path(args.summary).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


def replay(args: argparse.Namespace) -> int:
    target = load_targets()[args.target]
    failed = 0
    for path in args.files:
        try:
            target.run(Path(path).read_bytes())
        except Exception:
            failed += 1
            print(f"{path}: FAILED")
            traceback.print_exc()
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the targets and their invariants")
    runner = commands.add_parser("run", help="fuzz targets (all by default)")
    runner.add_argument("targets", nargs="*")
    budget = runner.add_mutually_exclusive_group(required=True)
    budget.add_argument("--runs", type=int, help="inputs per target")
    budget.add_argument("--seconds", type=int, help="seconds per target")
    runner.add_argument("--seed", type=int, default=1)
    runner.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    runner.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    runner.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    runner.add_argument("--workdir", default=str(ROOT / ".fuzz"), help="corpus, crashes and logs (default .fuzz)")
    runner.add_argument("--summary", help="write the results as JSON here")
    replayer = commands.add_parser("replay", help="run one target on input files, in this process")
    replayer.add_argument("target")
    replayer.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    args.libfuzzer = extra
    if args.command == "list":
        for target in load_targets().values():
            print(f"{target.name:16} {target.invariant}")
        return 0
    return run(args) if args.command == "run" else replay(args)


if __name__ == "__main__":
    sys.exit(main())
