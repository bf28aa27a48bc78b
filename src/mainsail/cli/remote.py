"""What the commands that talk to a running ``mainsail up`` share: its URL option, the boto3 clients,
errors as one-line messages and exit codes, and the console they print to.

Every such command talks to the control plane through the real boto3 ``sagemaker`` and
``sagemaker-runtime`` clients, exactly as a user's own scripts would. boto3 is imported on first use
(by :mod:`mainsail.client.aws`), so that the CLI stays importable without it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from mainsail.client import aws as client
from mainsail.client.errors import MainsailClientError

UrlOption = Annotated[str, typer.Option(
    "--url", envvar="MAINSAIL_URL", help="The control plane (`mainsail up`) [env MAINSAIL_URL]")]


class Fail(Exception):
    """A command's error: printed as ``error: <message>`` on stderr, then exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def err(message: str) -> None:
    """Print ``message`` on stderr."""
    typer.echo(message, err=True)


def console(*, stderr: bool = False) -> Any:
    """A rich console for a command's output (rich is imported here: start-up cost)."""
    from rich.console import Console

    made = Console(stderr=stderr, highlight=False)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        made.width = 200  # piped or captured: fold less than the 80 columns rich assumes
    return made


@dataclass
class Api:
    """The boto3 clients for one control plane URL, each made on first use."""

    url: str
    _clients: dict[str, Any] = field(default_factory=dict)

    def _client(self, service: str) -> Any:
        if service in self._clients:
            return self._clients[service]
        try:
            made = client.boto3_client(self.url, service)
        except ImportError:
            raise Fail("the commands need boto3: pip install 'mainsail[s3]'") from None
        except ValueError as exc:  # botocore rejects a malformed endpoint_url
            raise Fail(f"bad --url {self.url!r}: {exc}") from None
        self._clients[service] = made
        return made

    @property
    def sm(self) -> Any:
        return self._client("sagemaker")

    @property
    def runtime(self) -> Any:
        return self._client("sagemaker-runtime")

    @property
    def cloudwatch(self) -> Any:
        return self._client("cloudwatch")

    @property
    def autoscaling(self) -> Any:
        return self._client("application-autoscaling")

    def invoke_url(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/endpoints/{name}/invocations"


@contextlib.contextmanager
def handled(url: str) -> Iterator[None]:
    """Turn what the API or the network raise into one-line errors and exit codes, never tracebacks
    (botocore's errors translated by :func:`mainsail.client.aws.translated_errors`)."""
    try:
        with client.translated_errors(url):
            yield
    except Fail as exc:
        err(f"error: {exc.message}")
        raise typer.Exit(exc.code) from None
    except MainsailClientError as exc:
        from_api = type(exc.__cause__).__name__ == "ClientError" or hasattr(exc.__cause__, "response")
        err(f"error: {exc.code}: {exc.message}" if from_api else f"error: {exc.message}")
        raise typer.Exit(1) from None


def when(value: Any) -> str:
    """A time as the commands print it (local time to the second)."""
    if isinstance(value, dt.datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value is None else str(value)
