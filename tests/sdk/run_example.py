"""Run an example script with a SageMaker SDK's interpreter, the way a user would, except for the
SDK's endpoint polling interval (30 s per poll in both majors, slept before the first poll too),
shortened here to 1 s through the SDK's own module constants and function defaults.
Usage: python run_example.py SCRIPT [ARGS...] (cwd: the script's folder)."""

from __future__ import annotations

import importlib.metadata
import runpy
import sys
from typing import Any


def _faster(function: Any) -> None:
    """Replace a default polling interval of 30 s by 1 s."""
    defaults = function.__defaults__ or ()
    function.__defaults__ = tuple(1 if value == 30 else value for value in defaults)


major = int(importlib.metadata.version("sagemaker").split(".")[0])
if major < 3:
    import sagemaker.session as session

    session.DEFAULT_EP_POLL = session.EP_LOGGER_POLL = 1
    _faster(session.Session.wait_for_endpoint)
else:
    from sagemaker.core.helper import session_helper
    from sagemaker.serve.model_builder import ModelBuilder

    session_helper.DEFAULT_EP_POLL = session_helper.EP_LOGGER_POLL = 1
    _faster(session_helper.Session.wait_for_endpoint)
    _faster(ModelBuilder._wait_for_endpoint)

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
