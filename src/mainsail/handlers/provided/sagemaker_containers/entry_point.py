"""``sagemaker_containers.entry_point`` (provided by mainsail): XGBoost script-mode scripts import it at
their top (``from sagemaker_containers import entry_point``); the import must work when the script is
served. Its ``run`` starts a *training* entry point inside a SageMaker training container, which
mainsail does not provide: it raises, saying so."""

from __future__ import annotations

from typing import Any


def run(uri: str, user_entry_point: str, args: Any = None, env_vars: Any = None, wait: bool = True,
        capture_error: bool = False, runner: Any = None, extra_opts: Any = None) -> Any:
    """Refused: mainsail serves models; run a training script with ``python`` yourself."""
    raise NotImplementedError(
        f"sagemaker_containers.entry_point.run starts the training entry point {user_entry_point!r} in a SageMaker "
        "training container; mainsail serves models and does not run training (run the script with python)")
