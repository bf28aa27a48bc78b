"""``sagemaker_containers.beta`` (provided by mainsail): see :mod:`.framework`."""
