"""CloudWatch metrics and alarms on the control plane's port (issue 20): the one-minute series SageMaker
publishes for endpoints, the metrics users put themselves, and the API that reads them."""
