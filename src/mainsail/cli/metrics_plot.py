"""``mainsail metrics --plot FILE.png``: the endpoint's minutes as a chart of three panels (invocations and
errors, model latency, CPU and memory), one line per variant and statistic.

matplotlib is imported only here, when a chart is asked for (``pip install 'mainsail[plot]'``); it draws
with its Agg backend, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mainsail.cli.metric_columns import COLUMNS, Column, Series, query_id
from mainsail.cli.remote import Fail

NEEDS_MATPLOTLIB = "--plot needs matplotlib: pip install 'mainsail[plot]'"
#: the panels, top to bottom: title, y label, the column keys drawn in it
PANELS = (("Invocations", "per period", ("inv", "e4xx", "e5xx")),
          ("ModelLatency", "ms", ("p50", "p99", "avg")),
          ("Utilization", "%", ("cpu", "mem")))
_STYLES = {"inv": "-", "e4xx": "--", "e5xx": ":", "p50": "-", "p99": "--", "avg": ":", "cpu": "-", "mem": "--"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise Fail(NEEDS_MATPLOTLIB) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_chart(path: Path, endpoint: str, variants: Sequence[str], series: Series, minutes: int) -> None:
    """Draw ``series`` (as :func:`mainsail.cli.metrics.fetch` returns them) into the PNG ``path``."""
    plt = _pyplot()
    by_key: dict[str, Column] = {c.key: c for c in COLUMNS}
    figure, axes = plt.subplots(len(PANELS), 1, sharex=True, figsize=(10, 8), constrained_layout=True)
    try:
        figure.suptitle(f"{endpoint}: the last {minutes} min")
        for ax, (title, unit, keys) in zip(axes, PANELS, strict=True):
            drawn = False
            for index, variant in enumerate(variants):
                for key in keys:
                    column = by_key[key]
                    points = series.get(query_id(column, index), [])
                    if not points:
                        continue
                    label = f"{variant} {column.stat if column.metric == 'ModelLatency' else column.metric}"
                    ax.plot([ts for ts, _ in points], [v * column.factor for _, v in points],
                            linestyle=_STYLES[key], marker="." if len(points) < 30 else None, label=label)
                    drawn = True
            ax.set_title(title, loc="left", fontsize="medium")
            ax.set_ylabel(unit)
            ax.grid(True, alpha=0.3)
            if drawn:
                ax.legend(fontsize="small", loc="upper left")
            else:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        axes[-1].tick_params(axis="x", labelrotation=30)
        axes[-1].set_xlabel("UTC")
        try:
            figure.savefig(path, format="png", dpi=100)
        except OSError as exc:
            raise Fail(f"--plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
