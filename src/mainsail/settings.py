"""Settings, validated once at start-up and passed explicitly.

Every ``mainsail serve`` option also reads the environment variable SageMaker containers use, so a
model's ``Environment`` map works unchanged. Explicit values (CLI flags, keyword arguments) win.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Framework = Literal["auto", "generic", "sklearn", "pytorch", "xgboost"]


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def default_home() -> Path:
    return Path(os.environ.get("MAINSAIL_HOME") or Path.home() / ".mainsail")


class ServeSettings(BaseSettings):
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
    """Threads per worker that run model code (the event loop never does)."""
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
    model_name: str = Field("model", validation_alias=_env("MAINSAIL_MODEL_NAME"))

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
