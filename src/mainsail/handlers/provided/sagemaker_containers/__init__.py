"""The serving part of ``sagemaker-containers`` (2.8.6 does not install on Python 3.11) that scripts
import through ``sagemaker_containers.beta.framework``: ``content_types``, ``encoders``, ``errors``
and ``worker.Response``, provided by mainsail (see :mod:`mainsail.handlers.provided`)."""
