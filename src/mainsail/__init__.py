"""mainsail: self-hosted real-time model inference that speaks SageMaker's language."""

from __future__ import annotations

from mainsail.errors import MainsailError

__version__ = "0.1.0"

__all__ = ["MainsailError", "__version__"]
