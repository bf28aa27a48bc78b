"""What ``mainsail doctor`` reports: :class:`Finding` (one result) and :class:`State` (what a run collects).

Every check appends findings to a :class:`State`; :func:`human_size` is the size wording they share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Level = Literal["error", "warning", "ok"]

MB = 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """One result: ``error`` (the model will not deploy or serve correctly), ``warning``, or ``ok``."""

    level: Level
    check: str
    message: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)




@dataclass
class State:
    """One ``diagnose`` run: its findings, the temporary directories to remove after it, and the
    directories whose modules (the script, its helpers) are unloaded after it."""

    findings: list[Finding] = field(default_factory=list)
    cleanup: list[Path] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)

    def add(self, level: Level, check: str, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(level, check, message, fix))


def human_size(n: int | float) -> str:
    if n < 1024:
        return f"{n:g} bytes"
    if n < MB:
        return f"{n / 1024:.1f} KB"
    return f"{n / MB:.2f} MB" if n < 1024**3 else f"{n / 1024**3:.2f} GB"
