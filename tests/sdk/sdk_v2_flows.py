"""SageMaker Python SDK v2 flows against mainsail, one per call: `python sdk_v2_flows.py FLOW ARGS...`,
run by tests/sdk/test_sdk.py through run_example.py after `eval "$(mainsail env)"`. Every flow
cleans up after itself through the SDK (the test then checks with boto3 that nothing is left).

- pytorch MODEL_TAR SOURCE_DIR: PyTorchModel(entry_point, source_dir, model_data=s3) (the SDK repacks the
  archive with code/), JSONSerializer / JSONDeserializer, delete_model + delete_endpoint.
- xgboost MODEL_TAR: the built-in XGBoost algorithm image (image_uris.retrieve) with Model(image_uri=...),
  CSV in, predictions out.
- numpy MODEL_TAR SOURCE_DIR: SKLearnModel(entry_point with only a model_fn), NumpySerializer /
  NumpyDeserializer (application/x-npy both ways, the container's defaults).
- update MODEL_TAR SOURCE_DIR: Predictor.update_endpoint(initial_instance_count=2, instance_type=...),
  then to a second model (update_endpoint(model_name=...)), predicting after each.
- failure MODEL_TAR SOURCE_DIR: a model_fn that raises: deploy() raises UnexpectedStatusException with
  the FailureReason, then the endpoint, its config and the model are deleted.
"""

from __future__ import annotations

import json
import sys

import boto3
import numpy as np
import sagemaker
from sagemaker.deserializers import JSONDeserializer, NumpyDeserializer
from sagemaker.predictor import Predictor
from sagemaker.serializers import CSVSerializer, JSONSerializer, NumpySerializer

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
session = sagemaker.Session()
bucket = session.default_bucket()
sm = boto3.client("sagemaker")


def upload(path: str, prefix: str) -> str:
    return session.upload_data(path, bucket=bucket, key_prefix=prefix)


def pytorch(model_tar: str, source_dir: str) -> None:
    from sagemaker.pytorch import PyTorchModel

    model = PyTorchModel(
        model_data=upload(model_tar, "pytorch/output"),
        role=ROLE,
        entry_point="inference.py",
        source_dir=source_dir,
        framework_version="2.1",
        py_version="py310",
        sagemaker_session=session,
    )
    predictor = model.deploy(initial_instance_count=1, instance_type="ml.m5.large", endpoint_name="sdk-v2-pytorch",
                             serializer=JSONSerializer(), deserializer=JSONDeserializer())
    container = sm.describe_model(ModelName=model.name)["PrimaryContainer"]
    print("image:", container["Image"])
    print("repacked:", container["ModelDataUrl"])
    print("program:", container["Environment"]["SAGEMAKER_PROGRAM"])
    print("predict:", json.dumps(predictor.predict([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])))
    predictor.delete_model()
    predictor.delete_endpoint()
    print("deleted", model.name)


def xgboost(model_tar: str) -> None:
    from sagemaker import image_uris
    from sagemaker.model import Model

    image = image_uris.retrieve("xgboost", session.boto_region_name, "1.7-1")
    print("image:", image)
    model = Model(image_uri=image, model_data=upload(model_tar, "xgboost/output"), role=ROLE,
                  predictor_cls=Predictor, sagemaker_session=session)
    predictor = model.deploy(initial_instance_count=1, instance_type="ml.m5.large", endpoint_name="sdk-v2-xgboost",
                             serializer=CSVSerializer())
    rows = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5], [1.0, 1.0, 1.0]])
    answer = predictor.predict(rows).decode()
    print("predict:", json.dumps([float(line) for line in answer.split()]))
    predictor.delete_model()
    predictor.delete_endpoint()
    print("deleted", model.name)


def sklearn_model(model_tar: str, source_dir: str, prefix: str):
    from sagemaker.sklearn import SKLearnModel

    return SKLearnModel(model_data=upload(model_tar, prefix), role=ROLE, entry_point="inference.py",
                        source_dir=source_dir, framework_version="1.2-1", py_version="py3",
                        sagemaker_session=session)


ROWS = np.array([[1.5, 16.0, 14, 23.0], [0.0, 1.0, 2, 0.5]])


class ShowingNumpyDeserializer(NumpyDeserializer):
    """NumpyDeserializer also reads JSON and CSV answers: print the response's Content-Type too."""

    def deserialize(self, stream, content_type):
        print("response content type:", content_type)
        return super().deserialize(stream, content_type)


def numpy(model_tar: str, source_dir: str) -> None:
    model = sklearn_model(model_tar, source_dir, "numpy/output")
    predictor = model.deploy(initial_instance_count=1, instance_type="ml.m5.large", endpoint_name="sdk-v2-numpy",
                             serializer=NumpySerializer(), deserializer=ShowingNumpyDeserializer())
    print("request content type:", predictor.serializer.CONTENT_TYPE, "accept:", predictor.accept)
    answer = predictor.predict(ROWS)
    print("predict:", type(answer).__name__, answer.dtype, json.dumps(answer.tolist()))
    predictor.delete_model()
    predictor.delete_endpoint()
    print("deleted", model.name)


def update(model_tar: str, source_dir: str) -> None:
    model = sklearn_model(model_tar, source_dir, "update/output")
    predictor = model.deploy(initial_instance_count=1, instance_type="ml.m5.large", endpoint_name="sdk-v2-update",
                             serializer=JSONSerializer(), deserializer=JSONDeserializer())
    first_config = predictor._get_endpoint_config_name()
    print("predict 1:", json.dumps(predictor.predict(ROWS.tolist())))

    predictor.update_endpoint(initial_instance_count=2, instance_type="ml.m5.large")
    second_config = predictor._get_endpoint_config_name()
    print("config 2:", second_config)
    print("predict 2:", json.dumps(predictor.predict(ROWS.tolist())))
    variant = sm.describe_endpoint(EndpointName="sdk-v2-update")["ProductionVariants"][0]
    print("instances:", variant["CurrentInstanceCount"], variant["DesiredInstanceCount"])

    other = sklearn_model(model_tar, source_dir, "update/other")
    other.name = "sdk-v2-update-second"
    other.create(instance_type="ml.m5.large")
    predictor.update_endpoint(model_name=other.name, initial_instance_count=1, instance_type="ml.m5.large")
    third_config = predictor._get_endpoint_config_name()
    print("models:", predictor._get_model_names())
    print("predict 3:", json.dumps(predictor.predict(ROWS.tolist())))
    variant = sm.describe_endpoint(EndpointName="sdk-v2-update")["ProductionVariants"][0]
    print("instances:", variant["CurrentInstanceCount"], variant["DesiredInstanceCount"])

    predictor.delete_model()  # the second model, the one the current config names
    predictor.delete_endpoint()  # and the current config
    for config in (first_config, second_config):
        sm.delete_endpoint_config(EndpointConfigName=config)
    sm.delete_model(ModelName=model.name)
    print("deleted", first_config, second_config, third_config, model.name, other.name)


def failure(model_tar: str, source_dir: str) -> None:
    from sagemaker.exceptions import UnexpectedStatusException

    model = sklearn_model(model_tar, source_dir, "failure/output")
    try:
        model.deploy(initial_instance_count=1, instance_type="ml.m5.large", endpoint_name="sdk-v2-failure")
    except UnexpectedStatusException as exc:
        print("raised:", type(exc).__name__, "|", str(exc).replace("\n", " "))
    else:
        raise AssertionError("deploy() returned")
    predictor = Predictor("sdk-v2-failure", sagemaker_session=session)
    config = predictor._get_endpoint_config_name()
    predictor.delete_model()
    predictor.delete_endpoint()
    print("deleted", config, model.name)


if __name__ == "__main__":
    {"pytorch": pytorch, "xgboost": xgboost, "numpy": numpy, "update": update, "failure": failure}[sys.argv[1]](
        *sys.argv[2:])
