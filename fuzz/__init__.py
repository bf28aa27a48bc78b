"""Fuzz targets for mainsail's input surfaces: ``python -m fuzz {list,run,replay}`` (docs/reliability.md).

Each target is a function of one ``bytes`` input that returns when an invariant holds and raises
(:class:`Violation`, or whatever escaped the code under test) when it does not. ``python -m fuzz run``
drives them with atheris (libFuzzer, coverage-guided) or, where atheris is not installed, with a seeded
random mutator; ``make test`` runs each a fixed number of times (tests/fuzz/test_fuzz_targets.py) and
``make fuzz`` for minutes. Importing this package imports nothing of mainsail: the runner imports the
target modules itself, under atheris's instrumentation.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MODULES = ("fuzz.codecs", "fuzz.aws", "fuzz.s3", "fuzz.archives")


class Violation(AssertionError):
    """An invariant of a target does not hold (raised explicitly: ``python -O`` keeps it)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


@dataclass(frozen=True)
class Target:
    """One fuzz target: ``run(data)`` checks ``invariant``; ``seeds()`` gives valid inputs to start from."""

    name: str
    run: Callable[[bytes], None]
    invariant: str
    seeds: Callable[[], list[bytes]] = field(default=lambda: [])
    max_len: int = 4096


def scratch(name: str) -> Path:
    """A fresh directory for a target's files: under ``$MAINSAIL_FUZZ_SCRATCH`` (which the runner makes and
    removes) or else the system's temporary directory."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=os.environ.get("MAINSAIL_FUZZ_SCRATCH")))


def load_targets() -> dict[str, Target]:
    """Every target by name (imports the target modules, and mainsail with them)."""
    found: dict[str, Target] = {}
    for name in MODULES:
        for target in importlib.import_module(name).TARGETS:
            found[target.name] = target
    return found
