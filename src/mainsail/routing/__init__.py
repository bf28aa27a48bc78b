"""SageMaker-runtime: ``InvokeEndpoint``, the control plane's request path.

``router`` (the route: validate → pick → forward) over ``table`` (routing tables), ``traffic``
(in-flight counts, idle clocks, cold starts, replacement, throttling), ``forwarding`` (one trip to an
instance), ``responses`` (runtime errors as exceptions), ``recorder`` (what each request adds to the
metrics SageMaker publishes), ``metrics`` (``GET /metrics`` over the recorder) and ``target_model``
(multi-model endpoints).
"""

from __future__ import annotations
