"""mainsail: self-hosted real-time model inference that speaks SageMaker's language.

``import mainsail`` stays cheap: the Python API (``mainsail.deploy``, ``mainsail.endpoint``,
``mainsail.load`` and their classes, all in the ``mainsail.client`` package) is imported on first use
(PEP 562), and with it boto3 or the serving stack only when a call needs them.
"""

from __future__ import annotations

from mainsail._version import __version__
from mainsail.errors import MainsailError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing would double what `import mainsail` costs
if TYPE_CHECKING:
    from typing import Any

    from mainsail.client.bodies import Response
    from mainsail.client.endpoint import Endpoint, deploy, endpoint
    from mainsail.client.errors import DeploymentFailed, MainsailClientError, ModelInvocationError
    from mainsail.client.local import LocalModel, load


_LAZY = frozenset({"deploy", "endpoint", "load", "Endpoint", "LocalModel", "Response", "MainsailClientError",
                   "ModelInvocationError", "DeploymentFailed"})

__all__ = ["DeploymentFailed", "Endpoint", "LocalModel", "MainsailClientError", "MainsailError",
           "ModelInvocationError", "Response", "__version__", "deploy", "endpoint", "load"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        # on first use only (PEP 562): `import mainsail` imports no client module, nor boto3
        from mainsail import client

        value = getattr(client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mainsail' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
