"""Application Auto Scaling for SageMaker endpoint variants: the API (``AnyScaleFrontendService``, AWS JSON
1.1) over the control plane's store, and the :class:`~mainsail.scaling.scaler.Scaler` that changes a
variant's DesiredInstanceCount when its policies' alarms fire and its scheduled actions come due."""
