"""``sagemaker_containers`` ``modules`` (provided by mainsail): finding and importing a user module.
Installing or running one (``install``, ``run``, ``download_and_install``) is the training container's
job and raises, saying so."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

DEFAULT_MODULE_NAME = "default_user_module_name"


def exists(name: str) -> bool:
    """Whether module ``name`` can be imported."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def has_requirements(path: str) -> bool:
    return os.path.exists(os.path.join(path, "requirements.txt"))


def import_module(uri: str, name: str = DEFAULT_MODULE_NAME, cache: Any = None) -> ModuleType:
    """Import module ``name`` from the local folder ``uri`` (an S3 URI is the training container's)."""
    if "://" in uri and not uri.startswith("file://"):
        raise NotImplementedError(f"downloading {uri} is the SageMaker container's job; mainsail imports local folders")
    folder = uri.removeprefix("file://")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def _refused(what: str) -> NotImplementedError:
    return NotImplementedError(f"sagemaker_containers.modules.{what} installs or runs a user module in a SageMaker "
                               "training container; mainsail does not (code/requirements.txt is installed by serve)")


def install(path: str, capture_error: bool = False) -> None:
    raise _refused("install")


def run(module_name: str, args: Any = None, env_vars: Any = None, wait: bool = True,
        capture_error: bool = False) -> Any:
    raise _refused("run")


def download_and_install(uri: str, name: str = DEFAULT_MODULE_NAME, cache: bool = True) -> None:
    raise _refused("download_and_install")
