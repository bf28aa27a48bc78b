"""Settings, validated once at start-up and passed explicitly.

Every ``mainsail serve`` option also reads the environment variable SageMaker containers use, so a
model's ``Environment`` map works unchanged. Explicit values (CLI flags, keyword arguments) win.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Framework = Literal["auto", "generic", "sklearn", "pytorch", "xgboost", "huggingface"]


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def default_home() -> Path:
    return Path(os.environ.get("MAINSAIL_HOME") or Path.home() / ".mainsail")


class ConnectionLimits(BaseSettings):
    """What a client connection may take of either plane's server (read by both from the same variables)."""

    request_head_timeout: float = Field(30.0, gt=0, le=3600, validation_alias=_env("MAINSAIL_REQUEST_HEAD_TIMEOUT"))
    """Seconds a client has to send a request's line and headers (from connecting, for a connection's
    first request; from the head's first byte, for later ones); then the connection is closed, with
    408 if part of a head came. Also the grace a request body has before ``request_body_min_rate``
    applies (``mainsail.connections``)."""
    request_head_max_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, validation_alias=_env("MAINSAIL_REQUEST_HEAD_MAX_BYTES"))
    """The largest request line and headers, in bytes; a larger head is answered 431."""
    request_body_min_rate: float = Field(1024.0, ge=0, validation_alias=_env("MAINSAIL_REQUEST_BODY_MIN_RATE"))
    """Bytes a second a request body must average once ``request_head_timeout`` has passed since its
    head, else 408 (0: no limit)."""


class ServeSettings(ConnectionLimits):
    """Everything one ``mainsail serve`` process group needs."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="forbid", frozen=True, env_prefix="MAINSAIL_")

    model_path: str = Field("/opt/ml/model", validation_alias=_env("MAINSAIL_MODEL"))
    """Model directory or ``model.tar.gz``."""
    entry_point: str | None = Field(None, validation_alias=_env("SAGEMAKER_PROGRAM"))
    """The user script (``inference.py``); found in ``source_dir`` or ``<model>/code``."""
    source_dir: str | None = Field(
        None, validation_alias=_env("SAGEMAKER_SUBMIT_DIRECTORY")
    )
    """A directory or ``sourcedir.tar.gz`` holding the user script."""
    host: str = Field("127.0.0.1", validation_alias=_env("MAINSAIL_HOST"))
    port: int = Field(8080, ge=0, le=65535, validation_alias=_env("SAGEMAKER_BIND_TO_PORT"))
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        validation_alias=_env("SAGEMAKER_MODEL_SERVER_WORKERS"),
    )
    timeout: float = Field(
        60.0, gt=0, validation_alias=_env("SAGEMAKER_MODEL_SERVER_TIMEOUT")
    )
    """Seconds a request may spend in the model before it is answered 504."""
    log_level: str = Field("info", validation_alias=_env("SAGEMAKER_CONTAINER_LOG_LEVEL"))
    default_accept: str | None = Field(
        None,
        validation_alias=_env("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"),
    )
    max_payload_mb: float = Field(
        6.0, gt=0, validation_alias=_env("SAGEMAKER_MAX_PAYLOAD_IN_MB")
    )
    max_concurrent_transforms: int | None = Field(
        None, ge=1, validation_alias=_env("MAINSAIL_MAX_CONCURRENT_TRANSFORMS")
    )
    batch_strategy: Literal["MULTI_RECORD", "SINGLE_RECORD"] = Field(
        "MULTI_RECORD", validation_alias=_env("MAINSAIL_BATCH_STRATEGY")
    )
    install_requirements: bool = Field(
        True, validation_alias=_env("MAINSAIL_INSTALL_REQUIREMENTS")
    )
    reload: bool = Field(False, validation_alias=_env("MAINSAIL_RELOAD"))
    preload: bool = Field(True, validation_alias=_env("MAINSAIL_PRELOAD"))
    """Load the model once and fork the workers (shared memory) where the handler is fork-safe."""
    framework: Framework = Field("auto", validation_alias=_env("MAINSAIL_FRAMEWORK"))
    """Which framework container's default handler functions a script falls back to."""
    predict_threads: int = Field(2, ge=1, validation_alias=_env("MAINSAIL_PREDICT_THREADS"))
    """Threads per worker that run model calls measured slow (and batched calls)."""
    predict_placement: Literal["auto", "loop", "threads"] = Field(
        "auto", validation_alias=_env("MAINSAIL_PREDICT_PLACEMENT"))
    """Where a model call runs: ``auto`` on the event loop while calls are measured under
    ``loop_call_max_ms`` (a thread hand-off costs more than such a call), else in the predict
    threads; ``loop`` or ``threads`` forces either (``mainsail.serve.placement``)."""
    loop_call_max_ms: float = Field(2.0, gt=0, le=1000, validation_alias=_env("MAINSAIL_LOOP_CALL_MAX_MS"))
    """The median wall-clock call time under which ``auto`` runs model calls on the event loop (2 ms:
    under load a 0.6 ms call often takes 1 ms of wall-clock time, and a thread running Python holds
    the GIL, and so the loop, up to 5 ms anyway: ``sys.getswitchinterval()``)."""
    batching: bool = Field(True, validation_alias=_env("MAINSAIL_BATCHING"))
    """Adaptive batching: requests queued behind a busy model go to it together. The built-in
    handlers batch; a script batches when it defines ``predict_batch_fn``."""
    max_batch_size: int = Field(32, ge=1, le=4096, validation_alias=_env("MAINSAIL_MAX_BATCH_SIZE"))
    """Most requests merged into one model call."""
    max_batch_delay_ms: float = Field(0.0, ge=0, le=10_000, validation_alias=_env("MAINSAIL_MAX_BATCH_DELAY_MS"))
    """How long a batch formed under load may wait to fill up; a lone request never waits."""
    device: str = Field("auto", validation_alias=_env("MAINSAIL_DEVICE"))
    """Where the PyTorch handler runs the network: auto (GPU when available), cpu, cuda, cuda:1 ..."""
    use_onnx: bool | None = Field(None, validation_alias=_env("MAINSAIL_USE_ONNX"))
    """The PyTorch handler serves model.onnx when present unless this is false."""
    onnx_intra_op_threads: int | None = Field(None, ge=1, validation_alias=_env("ONNX_INTRA_OP_THREADS"))
    onnx_inter_op_threads: int | None = Field(None, ge=1, validation_alias=_env("ONNX_INTER_OP_THREADS"))
    home: Path = Field(default_factory=default_home, validation_alias=_env("MAINSAIL_HOME"))
    api_key: str | None = Field(None, min_length=8, repr=False, validation_alias=_env("MAINSAIL_API_KEY"))
    """A key every request but ``GET /ping`` must carry (``X-Api-Key`` or ``Authorization: Bearer``)."""
    model_name: str = Field("model", validation_alias=_env("MAINSAIL_MODEL_NAME"))
    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> str:
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            return logging.getLevelName(int(text)).lower()
        if text.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {text!r}: use debug, info, warning, error or 10..50")
        return text.lower()

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)


@dataclass(frozen=True)
class S3Access:
    """How the control plane reaches S3 for model data and job payloads.

    ``endpoint_url``: an S3 stand-in (moto, MinIO, ...) from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``;
    with none, mainsail's own store is used when it holds buckets, else AWS. ``region``: the client's
    region (else the AWS configuration's, else us-east-1). botocore reads the endpoint variables itself too."""

    endpoint_url: str | None = None
    region: str | None = None


DEFAULT_MODEL_DATA_MAX_BYTES = 20 * 1024**3


class ControlSettings(ConnectionLimits):
    """Everything ``mainsail up`` needs, read once at its start (``mainsail up``'s options win over the
    environment) and passed to the parts it assembles: nothing below ``gateway`` reads the environment."""

    # the variables named below are read; the prefix keeps a field's bare name (HOME, PORT) from being one
    model_config = SettingsConfigDict(populate_by_name=True, extra="forbid", frozen=True, env_prefix="MAINSAIL_UP_")

    home: Path = Field(default_factory=default_home, validation_alias=_env("MAINSAIL_HOME"))
    """State (``state.db``), model data cache, instance logs and the S3 store."""
    host: str = Field("127.0.0.1", validation_alias=_env("MAINSAIL_UP_HOST"))
    port: int = Field(8700, ge=0, le=65535, validation_alias=_env("MAINSAIL_UP_PORT"))
    serverless_idle_seconds: float = Field(
        300.0, ge=0, validation_alias=_env("MAINSAIL_SERVERLESS_IDLE_SECONDS"))
    """After how long without a request a serverless variant scales to zero."""
    async_idle_seconds: float | None = Field(
        None, ge=0, validation_alias=_env("MAINSAIL_ASYNC_IDLE_SECONDS"))
    """After how long with an empty queue an async endpoint scales to zero (unset: never)."""
    describe_settle_seconds: float = Field(
        5.0, ge=0, validation_alias=_env("MAINSAIL_DESCRIBE_SETTLE_SECONDS"))
    """How long DescribeEndpoint waits for a Creating / Updating / Deleting endpoint to settle."""
    model_data_max_bytes: int = Field(
        DEFAULT_MODEL_DATA_MAX_BYTES, gt=0,
        validation_alias=_env("MAINSAIL_MODEL_DATA_MAX_BYTES"))
    """The largest model data (archive or prefix) the control plane downloads or extracts."""
    s3_endpoint_url: str | None = Field(
        None, validation_alias=_env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
    region: str | None = Field(None, validation_alias=_env("AWS_REGION", "AWS_DEFAULT_REGION"))
    instance_client: Literal["loopback", "aiohttp"] = Field(
        "loopback", validation_alias=_env("MAINSAIL_INSTANCE_CLIENT"))
    """The HTTP client of the runtime's hop to instances: mainsail's own keep-alive client, or aiohttp's
    (docs/benchmarks.md compares them)."""
    max_instance_workers: int | None = Field(
        None, ge=1, validation_alias=_env("MAINSAIL_UP_MAX_INSTANCE_WORKERS"))
    """The most model-server workers one instance runs (unset: the host's cores). An instance runs
    one per vCPU of its instance type, as SageMaker's containers do, capped by this; a model's own
    ``SAGEMAKER_MODEL_SERVER_WORKERS`` is not capped."""
    metrics_time_scale: float = Field(1.0, gt=0, le=3600, validation_alias=_env("MAINSAIL_METRICS_TIME_SCALE"))
    """How much faster than real time CloudWatch's clock runs (tests and demos): 60 makes a one-minute period,
    an alarm's 60 s evaluation and a 60 s scaling cooldown last one real second. 1 (the default) is AWS's."""
    metrics_retention_days: float = Field(15.0, gt=0, le=455, validation_alias=_env("MAINSAIL_METRICS_RETENTION_DAYS"))
    """How long one-minute datapoints are kept (CloudWatch keeps them 15 days)."""

    credentials: Path | None = Field(None, validation_alias=_env("MAINSAIL_CREDENTIALS"))
    """A file in the shape of ``~/.aws/credentials``: the access keys whose SigV4 signatures are accepted
    (and the IAM policy attached to each). Unset: any signature is accepted (loopback only)."""
    insecure: bool = Field(False, validation_alias=_env("MAINSAIL_INSECURE"))
    """Allow a bind beyond loopback without credentials (anyone who reaches the port may do anything)."""
    certfile: Path | None = Field(None, validation_alias=_env("MAINSAIL_UP_CERTFILE"))
    """TLS certificate (PEM): serve HTTPS."""
    keyfile: Path | None = Field(None, validation_alias=_env("MAINSAIL_UP_KEYFILE"))
    """TLS private key (PEM) of ``certfile``."""

    @field_validator("async_idle_seconds", "s3_endpoint_url", "region", "max_instance_workers", "credentials",
                     "certfile", "keyfile", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("home", mode="after")
    @classmethod
    def _expanded(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def s3(self) -> S3Access:
        """What the model-data fetch and the jobs' storage need of S3."""
        return S3Access(self.s3_endpoint_url, self.region)
