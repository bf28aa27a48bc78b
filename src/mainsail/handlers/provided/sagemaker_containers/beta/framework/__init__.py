"""``sagemaker_containers.beta.framework`` as inference scripts import it (provided by mainsail):
``content_types``, ``encoders``, ``errors`` and ``worker`` (its ``Response``). The training-side
modules (``env``, ``modules``, ``transformer``, ``trainer``, ...) are not provided."""

from ... import _content_types as content_types
from ... import _encoders as encoders
from ... import _errors as errors
from ... import _worker as worker

__all__ = ["content_types", "encoders", "errors", "worker"]
