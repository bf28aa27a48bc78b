"""The data plane: the SageMaker container contract for one model."""
