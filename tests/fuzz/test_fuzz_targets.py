"""Every fuzz target (fuzz/, docs/reliability.md) for a fixed number of inputs, as ``make test`` runs them:
one ``python -m fuzz run`` (atheris when installed, else the seeded random mutator; seed 1, two targets
at once), each target starting from its seeds and the crash inputs kept in fuzz/corpus/. ``make fuzz``
runs the same targets for minutes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fuzz import load_targets

ROOT = Path(__file__).resolve().parents[2]
RUNS = 2000
TARGETS = sorted(load_targets())


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    work = tmp_path_factory.mktemp("fuzz")
    summary = work / "summary.json"
    done = subprocess.run([sys.executable, "-m", "fuzz", "run", "--runs", str(RUNS), "--seed", "1", "--jobs", "2",
                           "--workdir", str(work), "--summary", str(summary)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    if not summary.exists():
        pytest.fail(f"python -m fuzz run wrote no summary (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {result["target"]: result for result in json.loads(summary.read_text())}


@pytest.mark.parametrize("name", TARGETS)
def test_target_holds_its_invariant(results: dict[str, dict[str, Any]], name: str) -> None:
    result = results[name]
    crashes = "\n".join(f"{path}: {base64.b64encode(Path(path).read_bytes()).decode()}" for path in result["crashes"])
    assert result["ok"], f"{name} broke its invariant (inputs, base64):\n{crashes}\n{result['log_tail']}"
    assert result["runs"] >= RUNS


def test_every_target_has_seeds_and_a_documented_invariant() -> None:
    for target in load_targets().values():
        assert target.seeds() and target.invariant
        assert all(len(seed) <= target.max_len for seed in target.seeds()), target.name
