"""``sagemaker_containers.beta.framework`` as inference scripts import it (provided by mainsail):
``content_types``, ``encoders``, ``errors``, ``worker`` (its ``Response``), ``env`` (paths and
``ServingEnv``), ``functions``, ``modules``, ``transformer`` and ``entry_point``. The training-side
modules (``trainer``, ``runner``, ``mpi``, ``params``, ``process``, ``server`` ...) are not provided."""

from ... import _content_types as content_types
from ... import _encoders as encoders
from ... import _env as env
from ... import _errors as errors
from ... import _functions as functions
from ... import _modules as modules
from ... import _transformer as transformer
from ... import _worker as worker
from ... import entry_point

__all__ = ["content_types", "encoders", "entry_point", "env", "errors", "functions", "modules", "transformer",
           "worker"]
