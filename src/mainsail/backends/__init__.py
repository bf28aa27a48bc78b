"""Where endpoint instances run: the seam a second backend plugs into.

``base`` (the ``Backend`` protocol, instances, their errors), ``local`` (``mainsail serve`` process
groups on loopback ports), ``loopback`` / ``streaming`` / ``wire`` (reaching an instance over HTTP/1.1),
``model_sources`` / ``model_cache`` / ``model_fetch`` (an instance's model data on local disk).
"""
