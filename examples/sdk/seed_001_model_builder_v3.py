"""Seed 001 (SageMaker Python SDK v3 "Quick Start Example": ModelBuilder build / deploy / invoke), run
against mainsail, then cleaned up with the sagemaker-core resource classes. With the SDK v3 installed:

    mainsail up &
    eval "$(mainsail env)"
    python examples/sdk/seed_001_model_builder_v3.py path/to/model.tar.gz

The archive is any SageMaker-style model (here: a scikit-learn model.joblib + code/inference.py);
this script uploads it to S3 first, as a training job would have.

Edits to the seed's code, and nothing else:
1. `ModelBuilder(model="my-model", model_path="s3://my-bucket/model.tar.gz")`: SDK v3 reads a string
   `model` as a JumpStart / Hugging Face model id and `model_path` as a local folder, so the seed's
   spelling never reaches a custom model on real SageMaker either. The SDK's spelling for "this
   image, these artifacts" is `image_uri=` + `s3_model_data_url=` (+ `role_arn=`, `instance_type=`),
   used here. Any image URI works with mainsail (it runs its own runtime and the model's code/).
2. Placeholders filled: the bucket/key (the s3:// URI uploaded below), the role ARN, `data`.
3. The upload of the model archive (stand-in for training), the prints, and the clean-up at the end
   (sagemaker-core `Endpoint.delete()` / `EndpointConfig.delete()` / `Model.delete()`).
"""

from __future__ import annotations

import json
import sys

import boto3

# -- stand-in for the training job: put the model archive in S3 ----------------------------------------
s3 = boto3.client("s3")
bucket = "my-bucket"
if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=bucket)
s3.upload_file(sys.argv[1], bucket, "model.tar.gz")
data = json.dumps([[1.5, 16.0, 14, 23.0], [0.0, 1.0, 2, 0.5]])

# -- seed 001: "SageMaker Python SDK V3" ---------------------------------------------------------------
from sagemaker.serve import ModelBuilder  # noqa: E402

model_builder = ModelBuilder(
    image_uri="my-inference-image",
    s3_model_data_url="s3://my-bucket/model.tar.gz",
    role_arn="arn:aws:iam::123456789012:role/SageMakerRole",
    instance_type="ml.m5.xlarge",
)

model = model_builder.build(model_name="my-deployed-model")

endpoint = model_builder.deploy(
    endpoint_name="my-endpoint",
    instance_type="ml.m5.xlarge",
    initial_instance_count=1
)

result = endpoint.invoke(
    body=data,
    content_type="application/json"
)
print("endpoint.invoke:", result.body.read().decode())

# -- clean up with the sagemaker-core resources -------------------------------------------------------------
from sagemaker.core.resources import Endpoint, EndpointConfig, Model  # noqa: E402

config_name = Endpoint.get(endpoint_name="my-endpoint").endpoint_config_name
endpoint.delete()
endpoint.wait_for_delete()
EndpointConfig.get(endpoint_config_name=config_name).delete()
Model.get(model_name="my-deployed-model").delete()
print("deleted my-endpoint")
