"""Where endpoint instances run: the seam a second backend plugs into.

``base`` (the ``Backend`` and ``Transport`` protocols, instances and their addresses, their errors),
``local`` (``mainsail serve`` process groups on loopback ports), ``http_transport`` (the ``Transport``
of instances that answer HTTP/1.1) over ``loopback`` / ``streaming`` / ``wire`` (the wire itself),
``model_sources`` / ``model_cache`` / ``model_fetch`` (an instance's model data on local disk).
"""
