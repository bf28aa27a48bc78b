"""``mainsail env``: the environment that points unmodified boto3 / SageMaker SDK scripts at ``mainsail up``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mainsail.cli.remote import UrlOption, err
from mainsail.client.aws import DEFAULT_URL
from mainsail.settings import default_home

#: Variables that would send a client elsewhere, or mean nothing with the dummy credentials.
ENV_UNSET = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
             "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_ENDPOINT_URL_SAGEMAKER",
             "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_LOGS",
             "AWS_ENDPOINT_URL_S3")


def default_bucket(region: str) -> str:
    """The bucket ``Session.default_bucket()`` would pick on AWS for the local account (the one
    STS GetCallerIdentity answers)."""
    from mainsail.aws.identity import ACCOUNT  # here: the CLI's start (serve) must not import the control plane

    return f"sagemaker-{region}-{ACCOUNT}"


def sdk_config_text(region: str) -> str:
    """The SageMaker Python SDK defaults config (``SAGEMAKER_USER_CONFIG_OVERRIDE``) for mainsail."""
    return (
        "# SageMaker Python SDK defaults for a local mainsail control plane (written by `mainsail env`).\n"
        "# DefaultS3Bucket spares Session.default_bucket() its STS GetCallerIdentity call, which the SDK\n"
        "# sends to https://sts.<region>.amazonaws.com whatever AWS_ENDPOINT_URL says; TelemetryOptOut\n"
        "# stops its telemetry requests.\n"
        "SchemaVersion: '1.0'\n"
        "SageMaker:\n"
        "  PythonSDK:\n"
        "    Modules:\n"
        "      TelemetryOptOut: true\n"
        "      Session:\n"
        f"        DefaultS3Bucket: {default_bucket(region)}\n"
    )


def env_vars(url: str, region: str, config_path: Path, keys: tuple[str, str] = ("mainsail", "mainsail"),
             ca_bundle: Path | None = None) -> dict[str, str]:
    """What an unmodified boto3 / SageMaker SDK script needs in its environment to use ``url``
    (signing with ``keys``: the dummy pair, or one that ``mainsail up --credentials`` accepts)."""
    values = {
        "AWS_ENDPOINT_URL": url,  # every service: SageMaker, runtime, STS, Logs, S3
        "AWS_ACCESS_KEY_ID": keys[0],  # always set: real credentials must not leave for AWS
        "AWS_SECRET_ACCESS_KEY": keys[1],
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probes
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config_path),
        "SAGEMAKER_VALIDATE_ROLE": "false",  # SDK v3: no IAM calls to check the role
        "MAINSAIL_URL": url,  # the mainsail commands
    }
    if ca_bundle is not None:
        values["AWS_CA_BUNDLE"] = str(ca_bundle)  # a self-signed certificate of `mainsail up --certfile`
    return values


def profile_keys(path: Path, profile: str) -> tuple[str, str]:
    """The access key pair of ``profile`` in a credentials file, read as ``mainsail up --credentials``
    reads it (so a file ``mainsail up`` refuses is refused here too)."""
    # deferred: the policy grammar it loads is start-up cost for every other `mainsail` command
    from mainsail.aws.auth.credentials import CredentialsError, load_credentials

    try:
        key = load_credentials(path).profile(profile)
    except CredentialsError as exc:
        raise ValueError(exc.message) from None
    return key.access_key_id, key.secret_access_key


def _quote_fish(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_env(values: dict[str, str], unset: tuple[str, ...], shell: str) -> str:
    """``values`` as commands of ``shell`` (sh, fish or powershell), ``unset`` removed first."""
    import shlex

    lines: list[str] = []
    if shell == "fish":
        lines += [f"set -e {name};" for name in unset]
        lines += [f"set -gx {name} {_quote_fish(value)};" for name, value in values.items()]
    elif shell == "powershell":
        lines += [f"Remove-Item Env:{name} -ErrorAction SilentlyContinue" for name in unset]
        lines += [f"$Env:{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in values.items()]
    else:
        lines.append("unset " + " ".join(unset))
        lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines)


def _valid_region(region: str) -> bool:
    import re

    return re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region) is not None


def env(
    url: UrlOption = DEFAULT_URL,
    region: Annotated[str, typer.Option(help="AWS_REGION / AWS_DEFAULT_REGION for the clients")] = "us-east-1",
    shell: Annotated[str, typer.Option(help="Syntax of the output: sh (bash, zsh), fish or powershell")] = "sh",
    home: Annotated[str | None, typer.Option(
        help="Where the SDK config file is written [env MAINSAIL_HOME; default ~/.mainsail]")] = None,
    profile: Annotated[str | None, typer.Option(
        help="Sign with this profile's keys from the credentials file that `mainsail up --credentials` "
             "reads (instead of the dummy keys)")] = None,
    credentials: Annotated[str | None, typer.Option(
        help="The credentials file of --profile [env MAINSAIL_CREDENTIALS]")] = None,
    ca_bundle: Annotated[str | None, typer.Option(
        "--ca-bundle", help="CA bundle (PEM) that verifies an https --url (AWS_CA_BUNDLE)")] = None,
) -> None:
    """Print the environment for boto3 / SageMaker SDK scripts: eval "$(mainsail env)"."""

    if shell not in ("sh", "bash", "zsh", "fish", "powershell", "pwsh"):
        err(f"error: unknown --shell {shell!r}: use sh, fish or powershell")
        raise typer.Exit(2)
    if not url.startswith(("http://", "https://")):
        err(f"error: --url must be an http:// or https:// URL, not {url!r}")
        raise typer.Exit(2)
    if not _valid_region(region):
        err(f"error: bad --region {region!r}")
        raise typer.Exit(2)
    keys = ("mainsail", "mainsail")
    if profile is not None:
        source = credentials or os.environ.get("MAINSAIL_CREDENTIALS")
        if not source:
            err("error: --profile needs --credentials FILE (or MAINSAIL_CREDENTIALS)")
            raise typer.Exit(2)
        try:
            keys = profile_keys(Path(source), profile)
        except ValueError as exc:
            err(f"error: {exc}")
            raise typer.Exit(2) from None
    bundle = Path(ca_bundle).expanduser().resolve() if ca_bundle else None
    if bundle is not None and not bundle.is_file():
        err(f"error: --ca-bundle {ca_bundle} is not a file")
        raise typer.Exit(2)
    root = Path(home).expanduser() if home else default_home()  # MAINSAIL_HOME, as mainsail up reads it
    config = root.resolve() / f"sagemaker-sdk-config-{region}.yaml"
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        text = sdk_config_text(region)
        if not config.is_file() or config.read_text() != text:
            tmp = config.with_name(config.name + f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(config)
    except OSError as exc:
        err(f"error: cannot write {config}: {exc}")
        raise typer.Exit(1) from None
    kind = {"bash": "sh", "zsh": "sh", "pwsh": "powershell"}.get(shell, shell)
    typer.echo(render_env(env_vars(url.rstrip("/"), region, config, keys, bundle), ENV_UNSET, kind))
    if kind == "sh":
        typer.echo('# run: eval "$(mainsail env)"')


def register(app: typer.Typer) -> None:
    """Add ``env`` to ``app``."""
    app.command()(env)
