"""``sagemaker_sklearn_container.exceptions`` (provided by mainsail)."""

from __future__ import annotations


class UserError(Exception):
    """An error the user's script or data caused."""
