"""Seed 003 ("host model on SageMaker for real-time prediction": SDK v2 deploy, predict, runtime client,
clean up), run against mainsail. Set-up, then run with the SageMaker SDK v2 installed:

    mainsail up &
    eval "$(mainsail env)"
    python examples/sdk/seed_003_sdk_v2.py path/to/model.tar.gz

The model archive is any SageMaker-style scikit-learn model (model.joblib + code/inference.py with a
model_fn); this script uploads it to S3 first, as a training job would have.

Edits to the seed's code, and nothing else:
1. Placeholders filled: `image` (any image URI: mainsail runs its own runtime and the model's
   code/inference.py), `model_data` (the s3:// URI uploaded below), `endpoint_name`, `aws_region`,
   `model_name` (the name the SDK gave the model).
2. `role=sagemaker.get_execution_role()` needs AWS (it asks IAM who the notebook runs as): a role ARN
   string instead. `Estimator.attach(...)` needs a training job: left out.
3. Typos fixed: `predictor_cls=Predictor` moved from `deploy()` (which v2 silently ignores there and
   then returns None) to `Model(...)`, where the seed's own notes document it;
   `serializer=CSVSerializer` (the class) -> `CSVSerializer()`; `content_type = 'text/csv',`
   (a tuple) -> `'text/csv'`; backquotes around `endpoint_config_name` removed; `test_data` /
   `input_str` built from a DataFrame defined here (the seed reads data.tsv).
4. The upload of the model archive (stand-in for training) and the final prints.
"""

from __future__ import annotations

import sys
from io import StringIO

import boto3
import pandas as pd
import sagemaker

# -- stand-in for the training job: put the model archive in S3 ----------------------------------------
session = sagemaker.Session()
bucket = session.default_bucket()
model_data = session.upload_data(sys.argv[1], bucket=bucket, key_prefix="scikit-byo/output")

# -- seed 003: "Create Model from existing S3 bucket" ---------------------------------------------------
from sagemaker.model import Model  # noqa: E402
from sagemaker.predictor import Predictor  # noqa: E402

# create model using s3 bucket and docker image URI
image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
model = Model(model_data=model_data,
              role="arn:aws:iam::123456789012:role/SageMakerRole",
              image_uri=image,
              predictor_cls=Predictor
              )

# -- seed 003: "Data Input from DataFrame" ----------------------------------------------------------
test = pd.DataFrame({"label": [1, 0], "a": [1.5, 0.0], "b": [16.0, 1.0], "c": [14, 2], "d": [23.0, 0.5]})
test_data = test.drop(['label'], axis=1)
input_str = test.drop(['label'], axis=1).to_csv(header=None, sep=',', index=False).strip('\n').split('\n')
data = pd.read_csv(StringIO('\n'.join(input_str)), index_col=None, header=None)

# -- seed 003: "Deploy the model" ----------------------------------------------------------------------
from sagemaker.serializers import CSVSerializer  # noqa: E402

# deploy via Model object
endpoint_name = 'scikit-byo-sdk-v2'
predictor = model.deploy(initial_instance_count=1,
                         instance_type='ml.m5.4xlarge',
                         serializer=CSVSerializer(),
                         endpoint_name=endpoint_name
                         )

# -- seed 003: "Use Predictor to Test Result" ----------------------------------------------------------
response = predictor.predict(test_data.values).decode("utf-8")
print("predictor.predict:", response)

# -- seed 003: "Use SageMaker Runtime Client to Test Result" ---------------------------------------------
import json  # noqa: E402

runtime = boto3.Session().client('sagemaker-runtime')
endpoint_name = 'scikit-byo-sdk-v2'
content_type = 'text/csv'
response = runtime.invoke_endpoint(EndpointName=endpoint_name,
                                   ContentType=content_type,
                                   Body=input_str[0])
result = json.loads(response['Body'].read().decode())
print("runtime.invoke_endpoint:", result)

# -- seed 003: "Clean Up" ----------------------------------------------------------------------------------
# Specify your AWS Region
aws_region = 'us-east-1'
# Specify the name of your endpoint and endpoint configuration
endpoint_name = 'scikit-byo-sdk-v2'
endpoint_config_name = 'scikit-byo-sdk-v2'
# Create a low-level SageMaker service client.
sagemaker_client = boto3.client('sagemaker', region_name=aws_region)
# Delete endpoint
sagemaker_client.delete_endpoint(EndpointName=endpoint_name)
sagemaker_client.delete_endpoint_config(EndpointConfigName=endpoint_config_name)

# Specify the name of your endpoint configuration
model_name = model.name
# Create a low-level SageMaker service client.
sagemaker_client = boto3.client('sagemaker', region_name=aws_region)
# Delete model
sagemaker_client.delete_model(ModelName=model_name)
print("cleaned up", endpoint_name, model_name)
