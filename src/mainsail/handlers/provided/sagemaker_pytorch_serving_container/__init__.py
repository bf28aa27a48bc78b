"""The part of the PyTorch container's ``sagemaker_pytorch_serving_container`` that inference scripts
import (provided by mainsail, see :mod:`mainsail.handlers.provided`): the default inference handler
(:mod:`.default_pytorch_inference_handler`, also under its older name ``default_inference_handler``)
whose methods a script's own functions call. TorchServe itself (``torchserve``, ``serving``) is
mainsail's server and is not provided."""
