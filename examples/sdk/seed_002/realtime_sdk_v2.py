"""Seed 002 ("13 - SageMaker Real-Time Inference": set-up, SKLearnModel deploy, SDK and boto3 invoke,
clean up), run against mainsail. From this folder (the seed's `inference.py` sits beside this file,
copied from the seed's section 2.3 as written), with the SageMaker SDK v2 installed:

    mainsail up &
    eval "$(mainsail env)"
    cd examples/sdk/seed_002 && python realtime_sdk_v2.py path/to/model.tar.gz

The archive holds a 5-feature scikit-learn classifier saved as model.joblib (the training job's
output in the seed); this script uploads it to MODEL_DATA first.

Edits to the seed's code, and nothing else:
1. Placeholders filled: the project names kept as the seed has them; MODEL_DATA's `xxxx` job suffix
   -> `0001`.
2. The upload of the model archive to MODEL_DATA (stand-in for the training job) and the bucket it
   needs; the final prints.
3. Section 4.2 invokes `{TEAM}-{PROJECT}-serverless`, the seed's serverless endpoint: here the
   real-time one deployed above. Section 6.1's `predictor.delete_endpoint()` is preceded by
   `predictor.delete_model()` (it finds the model through the endpoint's config, which
   `delete_endpoint()` removes) so that nothing is left behind.
4. Serverless (section 3.3), batch transform (section 5) and the `aws` CLI commands are left out:
   they come with the deployment-types issue.
"""

from __future__ import annotations

import sys

import boto3

# -- seed 002: 环境准备 ----------------------------------------------------------------------------------
import sagemaker
from sagemaker.model import Model  # noqa: F401  (imported by the seed)
from sagemaker.predictor import Predictor  # noqa: F401

# 获取当前环境信息
session = sagemaker.Session()
region = session.boto_region_name
account_id = boto3.client('sts').get_caller_identity()['Account']

# 项目配置（根据实际项目修改）
COMPANY = "acme"
TEAM = "rc"
PROJECT = "fraud-detection"
TEAM_FULLNAME = "RiskControl"
PROJECT_CAMEL = "FraudDetection"

# 自动构建资源名称（4 角色设计）
# Inference Endpoint 使用 InferenceRole
ROLE_NAME = f"SageMaker-{TEAM_FULLNAME}-{PROJECT_CAMEL}-InferenceRole"
ROLE_ARN = f"arn:aws:iam::{account_id}:role/{COMPANY}-sagemaker/{ROLE_NAME}"
BUCKET = f"{COMPANY}-sm-{TEAM}-{PROJECT}"

print(f"Region: {region}")
print(f"Inference Role ARN: {ROLE_ARN}")

MODEL_DATA = f's3://{BUCKET}/training/output/{TEAM}-{PROJECT}-sklearn-0001/output/model.tar.gz'

# -- stand-in for the training job: the model archive at MODEL_DATA ----------------------------------------
s3 = boto3.client('s3')
if BUCKET not in [b['Name'] for b in s3.list_buckets()['Buckets']]:
    s3.create_bucket(Bucket=BUCKET)
s3.upload_file(sys.argv[1], BUCKET, MODEL_DATA.split(f'{BUCKET}/', 1)[1])

# -- seed 002: 3.1 部署 Real-Time Endpoint ------------------------------------------------------------------
from sagemaker.sklearn import SKLearnModel  # noqa: E402

# 创建模型
sklearn_model = SKLearnModel(
    model_data=MODEL_DATA,
    role=ROLE_ARN,
    entry_point='inference.py',
    framework_version='1.2-1',
    py_version='py3',
    sagemaker_session=session
)

# 部署 Real-Time Endpoint
predictor = sklearn_model.deploy(
    initial_instance_count=1,
    instance_type='ml.t2.medium',  # 开发测试用小实例
    endpoint_name=f'{TEAM}-{PROJECT}-realtime',
    tags=[
        {'Key': 'Team', 'Value': TEAM},
        {'Key': 'Project', 'Value': PROJECT}
    ]
)

print(f"Endpoint deployed: {predictor.endpoint_name}")

# -- seed 002: 4.1 使用 SageMaker SDK -----------------------------------------------------------------------
import json  # noqa: E402

from sagemaker.deserializers import JSONDeserializer  # noqa: E402
from sagemaker.serializers import JSONSerializer  # noqa: E402

# 配置序列化器
predictor.serializer = JSONSerializer()
predictor.deserializer = JSONDeserializer()

# 准备测试数据
test_data = {
    'instances': [
        [0.5, 1.2, 0.3, 0.8, 0.1],
        [-0.2, 0.7, 1.1, 0.4, 0.6]
    ]
}

# 调用 Endpoint
response = predictor.predict(test_data)
print(f"Predictions: {response['predictions']}")
print(f"Probabilities: {response['probabilities']}")

# -- seed 002: 4.2 使用 Boto3 (the endpoint name: this one's, the seed's points at its serverless one) -------
runtime = boto3.client('sagemaker-runtime')

# 调用 Endpoint
response = runtime.invoke_endpoint(
    EndpointName=f'{TEAM}-{PROJECT}-realtime',
    ContentType='application/json',
    Body=json.dumps({
        'instances': [[0.5, 1.2, 0.3, 0.8, 0.1]]
    })
)

result = json.loads(response['Body'].read().decode())
print(f"Result: {result}")

# -- seed 002: 6.1 删除 Endpoint -----------------------------------------------------------------------------
# 使用 SDK
predictor.delete_model()  # (added: first, while the endpoint still names its config and model)
predictor.delete_endpoint()
print("deleted", predictor.endpoint_name)
