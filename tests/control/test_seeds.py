"""The boto3 snippets users run today (seeds 003 and 002, real-time parts), run as written: placeholders
filled in and typos fixed, nothing else changed. The only set-up is the environment a user exports
(``AWS_ENDPOINT_URL`` pointing at mainsail, any credentials, a region)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from tests.control.helpers import IMAGE, ROLE, WAIT, Plane

pytestmark = pytest.mark.slow

INFERENCE = """
import os
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    return model.predict_proba(data)[:, 1].round(6)
"""

# Seed 002's inference.py ("2.3 推理脚本示例"), as written: the copy beside the SDK example.
SEED_002_INFERENCE = (Path(__file__).resolve().parents[2] / "examples" / "sdk" / "seed_002" / "inference.py").read_text()

# Seed 003, "Data Input from DataFrame" and "Use SageMaker Runtime Client to Test Result"
# (fixed: `content_type = 'text/csv',` made a tuple; `input_str[:]` fed a list to StringIO).
SEED_003_INVOKE = """
from io import StringIO
import pandas as pd
input_str = test.drop(['label'], axis=1).to_csv(header=None, sep=',', index=False).strip('\\n').split('\\n')
data = pd.read_csv(StringIO('\\n'.join(input_str[:])), index_col=None, header=None)

import boto3
import json
runtime = boto3.Session().client('sagemaker-runtime')
endpoint_name = 'scikit-byo'
content_type = 'text/csv'
response = runtime.invoke_endpoint(EndpointName=endpoint_name,
                                   ContentType=content_type,
                                   Body= input_str[0])
result = json.loads(response['Body'].read().decode())
"""

# Seed 003, "Clean Up" (fixed: backquotes around the config name).
SEED_003_CLEANUP = """
import boto3
# Specify your AWS Region
aws_region='us-east-1'
# Specify the name of your endpoint and endpoint configuration
endpoint_name='scikit-byo'
endpoint_config_name='scikit-byo'
# Create a low-level SageMaker service client.
sagemaker_client = boto3.client('sagemaker', region_name=aws_region)
# Delete endpoint
sagemaker_client.delete_endpoint(EndpointName=endpoint_name)
sagemaker_client.delete_endpoint_config(EndpointConfigName=endpoint_config_name)

import boto3
# Specify your AWS Region
aws_region='us-east-1'
# Specify the name of your endpoint configuration
model_name='scikit-byo'
# Create a low-level SageMaker service client.
sagemaker_client = boto3.client('sagemaker', region_name=aws_region)
# Delete model
sagemaker_client.delete_model(ModelName=model_name)
"""

# Seed 002: the account lookup of its set-up, "4.2 使用 Boto3" and the boto3 clean-up.
SEED_002 = """
import boto3
account_id = boto3.client('sts').get_caller_identity()['Account']

COMPANY = "acme"
TEAM = "rc"
PROJECT = "fraud-detection"
TEAM_FULLNAME = "RiskControl"
PROJECT_CAMEL = "FraudDetection"
ROLE_NAME = f"SageMaker-{TEAM_FULLNAME}-{PROJECT_CAMEL}-InferenceRole"
ROLE_ARN = f"arn:aws:iam::{account_id}:role/{COMPANY}-sagemaker/{ROLE_NAME}"
BUCKET = f"{COMPANY}-sm-{TEAM}-{PROJECT}"

import boto3
import json

runtime = boto3.client('sagemaker-runtime')

# 调用 Endpoint
response = runtime.invoke_endpoint(
    EndpointName=f'{TEAM}-{PROJECT}-serverless',
    ContentType='application/json',
    Body=json.dumps({
        'instances': [[0.5, 1.2, 0.3, 0.8, 0.1]]
    })
)

result = json.loads(response['Body'].read().decode())
print(f"Result: {result}")

sm_client = boto3.client('sagemaker')
sm_client.delete_endpoint(EndpointName=f'{TEAM}-{PROJECT}-serverless')
sm_client.delete_endpoint_config(EndpointConfigName=f'{TEAM}-{PROJECT}-serverless')
"""


@pytest.fixture
def user_env(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `eval "$(mainsail env)"` will export: every AWS client pointed at mainsail."""
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", plane.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mainsail")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mainsail")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


def _deploy(plane: Plane, name: str, model_dir: Path) -> None:
    sm = plane.client("sagemaker")
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)


def _model_dir(root: Path, n_features: int, script: str = INFERENCE) -> tuple[Path, LogisticRegression]:
    (root / "code").mkdir(parents=True)
    (root / "code" / "inference.py").write_text(script)
    X = [[(i * 7 + j * 3) % 5 / 2.0 for j in range(n_features)] for i in range(40)]
    y = [int(row[0] > 1.0) for row in X]
    model = LogisticRegression().fit(X, y)
    joblib.dump(model, root / "model.joblib")
    return root, model


def _run(code: str, **namespace: Any) -> dict[str, Any]:
    exec(compile(textwrap.dedent(code), "<seed>", "exec"), namespace)  # noqa: S102 - the seed's own code
    return namespace


def test_seed_003_realtime_snippets(plane: Plane, user_env: None, tmp_path: Path) -> None:
    model_dir, model = _model_dir(tmp_path / "byo", 4)
    _deploy(plane, "scikit-byo", model_dir)
    test = pd.DataFrame({"label": [1, 0], "a": [1.5, 0.0], "b": [16.0, 1.0], "c": [14, 2], "d": [23.0, 0.5]})
    ns = _run(SEED_003_INVOKE, test=test)
    expected = model.predict_proba([[1.5, 16.0, 14, 23.0]])[:, 1].round(6)
    assert ns["result"] == pytest.approx(list(expected))
    _run(SEED_003_CLEANUP)
    sm = plane.client("sagemaker")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="scikit-byo", WaiterConfig=WAIT)
    assert sm.list_endpoint_configs()["EndpointConfigs"] == [] and sm.list_models()["Models"] == []


def test_seed_002_realtime_snippets(plane: Plane, user_env: None, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, model = _model_dir(tmp_path / "fraud", 5, SEED_002_INFERENCE)
    _deploy(plane, "rc-fraud-detection-serverless", model_dir)
    ns = _run(SEED_002)
    assert ns["account_id"] == "123456789012"
    assert ns["ROLE_ARN"] == ("arn:aws:iam::123456789012:role/acme-sagemaker/"
                              "SageMaker-RiskControl-FraudDetection-InferenceRole")
    row = [[0.5, 1.2, 0.3, 0.8, 0.1]]
    assert ns["result"]["predictions"] == model.predict(row).tolist()
    assert ns["result"]["probabilities"][0] == pytest.approx(model.predict_proba(row)[0].tolist())
    assert "Result: " in capsys.readouterr().out
    sm = plane.client("sagemaker")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="rc-fraud-detection-serverless", WaiterConfig=WAIT)
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []


def test_sts_query_protocol_errors(plane: Plane) -> None:
    import httpx

    r = httpx.post(plane.url + "/", content="Action=AssumeRole&Version=2011-06-15",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "<Code>InvalidAction</Code>" in r.text
    assert json.loads(httpx.post(plane.url + "/", content="{}").text)["__type"] == "UnknownOperationException"
