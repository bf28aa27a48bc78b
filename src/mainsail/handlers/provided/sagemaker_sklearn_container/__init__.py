"""The part of the scikit-learn container's ``sagemaker_sklearn_container`` that inference scripts
import (provided by mainsail, see :mod:`mainsail.handlers.provided`): :mod:`.serving`'s default
functions, which a script's own ``input_fn`` / ``output_fn`` call, and :mod:`.exceptions`."""
