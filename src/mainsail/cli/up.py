"""``mainsail up``: parse the options, configure logging, run the control plane (``gateway.server``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mainsail.log import configure_logging


def up(
    host: Annotated[str | None, typer.Option(help="Address to bind [env MAINSAIL_UP_HOST; default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(
        help="Port for the SageMaker API, the runtime API and /metrics [env MAINSAIL_UP_PORT; default 8700]")] = None,
    home: Annotated[str | None, typer.Option(
        help="State, models and logs [env MAINSAIL_HOME; default ~/.mainsail]")] = None,
    max_instance_workers: Annotated[int | None, typer.Option(
        help="Most model-server workers one instance runs (an instance type asks for one per vCPU) "
             "[env MAINSAIL_UP_MAX_INSTANCE_WORKERS; default this host's cores]")] = None,
    credentials: Annotated[str | None, typer.Option(
        help="Access keys (a file shaped like ~/.aws/credentials, a `policy = FILE` per key) whose SigV4 "
             "signatures are accepted; every other request is refused [env MAINSAIL_CREDENTIALS]")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow --host beyond loopback without --credentials (anyone may do anything)")] = False,
    certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM): serve HTTPS")] = None,
    keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM)")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the control plane: the SageMaker hosting API and runtime API for boto3 and the SDK."""
    # here, not at the top: start-up cost (the CLI's other commands, serve first, never load the control plane)
    from pydantic import ValidationError

    from mainsail.errors import MainsailError
    from mainsail.gateway.server import run_up
    from mainsail.settings import ControlSettings

    given: dict[str, Any] = {"host": host, "port": port, "home": Path(home) if home else None,
                             "max_instance_workers": max_instance_workers,
                             "credentials": Path(credentials) if credentials else None,
                             "insecure": insecure or None, "certfile": Path(certfile) if certfile else None,
                             "keyfile": Path(keyfile) if keyfile else None}
    try:
        settings = ControlSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(log_level)
    try:
        run_up(settings)
    except MainsailError as exc:  # the credentials or the exposure rules: nothing was started
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add ``up`` to ``app``."""
    app.command()(up)
