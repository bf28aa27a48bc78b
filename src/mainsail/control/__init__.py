"""The control plane: the SageMaker hosting API (AWS JSON 1.1) over a persistent state store.

Nothing here imports ``serve/``, ``handlers/``, ``features/`` or any model framework.
"""

from __future__ import annotations

from mainsail.control.api import create_control_app
from mainsail.control.store import SQLiteStore, StateStore

__all__ = ["SQLiteStore", "StateStore", "create_control_app"]
