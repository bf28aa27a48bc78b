"""``sagemaker_containers`` ``env`` as inference scripts read it (provided by mainsail): the container's
paths and the serving environment (:class:`ServingEnv`), read from the same ``SAGEMAKER_*`` variables.
Unlike the original, importing it creates no folders; the training environment (``TrainingEnv``,
``read_hyperparameters`` ...) is not provided."""

from __future__ import annotations

import logging
import multiprocessing
import os

from mainsail.handlers.gpus import visible_gpus

SAGEMAKER_BASE_PATH = os.path.join("/opt", "ml")
BASE_PATH_ENV = "SAGEMAKER_BASE_DIR"
base_dir = os.environ.get(BASE_PATH_ENV, SAGEMAKER_BASE_PATH)
code_dir = os.path.join(base_dir, "code")
model_dir = os.environ.get("SM_MODEL_DIR", os.path.join(base_dir, "model"))
input_dir = os.path.join(base_dir, "input")
input_config_dir = os.path.join(input_dir, "config")
output_dir = os.path.join(base_dir, "output")
output_data_dir = os.path.join(output_dir, "data")


def num_gpus() -> int:
    """GPUs visible to this process (counted without importing torch)."""
    return visible_gpus()


def num_cpus() -> int:
    return multiprocessing.cpu_count()


def _flag(value: str | None, default: bool) -> bool:
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


class ServingEnv:
    """The serving container's environment: the module to serve, the server's settings."""

    def __init__(self) -> None:
        module_name = os.environ.get("SAGEMAKER_PROGRAM")
        self.current_host = os.environ.get("CURRENT_HOST")
        self.module_name = module_name[:-3] if module_name and module_name.endswith(".py") else module_name
        self.user_entry_point = module_name
        self.module_dir = os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY", code_dir)
        self.log_level = int(os.environ.get("SAGEMAKER_CONTAINER_LOG_LEVEL", logging.INFO))
        self.model_dir = model_dir
        self.num_gpus = num_gpus()
        self.num_cpus = num_cpus()
        self.use_nginx = _flag(os.environ.get("SAGEMAKER_USE_NGINX"), True)
        self.model_server_timeout = int(os.environ.get("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60))
        self.model_server_workers = int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", self.num_cpus))
        self.framework_module = os.environ.get("SAGEMAKER_FRAMEWORK_MODULE")
        self.default_accept = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json")
        self.http_port = os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")
        self.safe_port_range = os.environ.get("SAGEMAKER_SAFE_PORT_RANGE")

    def properties(self) -> list[str]:
        return sorted(k for k in vars(self) if not k.startswith("_"))

    def __getitem__(self, key: str) -> object:
        return getattr(self, key)
