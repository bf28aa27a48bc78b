"""How ``mainsail doctor`` reports its findings: the exit code, the JSON document, the rich table."""

from __future__ import annotations

import json
from typing import Any

from mainsail.doctor.findings import Finding


def exit_code(findings: list[Finding], *, strict: bool = False) -> int:
    if any(f.level == "error" for f in findings):
        return 1
    if strict and any(f.level == "warning" for f in findings):
        return 1
    return 0


def to_json(path: str, findings: list[Finding], *, strict: bool = False) -> str:
    return json.dumps({
        "model": path,
        "ok": exit_code(findings, strict=strict) == 0,
        "errors": sum(f.level == "error" for f in findings),
        "warnings": sum(f.level == "warning" for f in findings),
        "findings": [f.to_dict() for f in findings],
    }, indent=2)


def render(path: str, findings: list[Finding], console: Any) -> None:
    """The findings as a table of ✓ / ! / ✗ lines, each problem with its fix under it."""
    from rich.table import Table
    from rich.text import Text

    marks = {"ok": ("✓", "green"), "warning": ("!", "yellow"), "error": ("✗", "red")}
    table = Table(title=f"mainsail doctor {path}", title_justify="left", show_header=False, box=None,
                  padding=(0, 1))
    table.add_column(width=1)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for finding in findings:
        mark, colour = marks[finding.level]
        text = Text(finding.message)
        if finding.fix and finding.level != "ok":
            text.append("\nfix: ", style="cyan").append(finding.fix)
        table.add_row(Text(mark, style=colour), finding.check, text)
    console.print(table)
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    colour = "red" if errors else "yellow" if warnings else "green"
    console.print(Text(f"{errors} error(s), {warnings} warning(s)", style=colour))
