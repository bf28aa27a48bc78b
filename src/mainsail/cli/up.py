"""``mainsail up``: parse the options, configure logging, run the control plane (``gateway.server``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mainsail.log import configure_logging


def up(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the SageMaker API, the runtime API and /metrics")] = 8700,
    home: Annotated[str | None, typer.Option(
        help="State, models and logs [env MAINSAIL_HOME; default ~/.mainsail]")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the control plane: the SageMaker hosting API and runtime API for boto3 and the SDK."""
    # here, not at the top: start-up cost (the CLI's other commands, serve first, never load the control plane)
    from mainsail.gateway.server import run_up

    configure_logging(log_level)
    run_up(host=host, port=port, home=Path(home) if home else None)


def register(app: typer.Typer) -> None:
    """Add ``up`` to ``app``."""
    app.command()(up)
