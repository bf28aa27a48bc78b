"""IAM policy grammar and evaluation, the credentials file, and the request → (action, resource) map."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.aws.auth import actions
from mainsail.aws.auth.credentials import CredentialsError, load_credentials
from mainsail.aws.auth.policy import Decision, PolicyError, parse_policy
from mainsail.gateway.app import OPERATIONS


def policy(*statements: dict[str, Any]) -> Any:
    return parse_policy({"Version": "2012-10-17", "Statement": list(statements)})


def test_allow_deny_and_implicit_deny() -> None:
    p = policy({"Effect": "Allow", "Action": ["sagemaker:Describe*", "sagemaker:InvokeEndpoint"], "Resource": "*"},
               {"Effect": "Deny", "Action": "sagemaker:*", "Resource": "arn:aws:sagemaker:*:*:endpoint/secret-*"})
    assert p.evaluate("sagemaker:DescribeEndpoint", "arn:aws:sagemaker:us-east-1:1:endpoint/a") is Decision.ALLOW
    assert p.evaluate("SageMaker:describeendpoint", "arn:aws:sagemaker:us-east-1:1:endpoint/a") is Decision.ALLOW
    assert p.evaluate("sagemaker:InvokeEndpoint", "arn:aws:sagemaker:us-east-1:1:endpoint/secret-x") \
        is Decision.EXPLICIT_DENY
    assert p.evaluate("sagemaker:DeleteEndpoint", "arn:aws:sagemaker:us-east-1:1:endpoint/a") is Decision.IMPLICIT_DENY


def test_wildcards_are_iams_and_resources_match_case() -> None:
    p = policy({"Effect": "Allow", "Action": "s3:Get?bject", "Resource": "arn:aws:s3:::b/[x]*"})
    assert p.evaluate("s3:GetObject", "arn:aws:s3:::b/[x]/anything") is Decision.ALLOW
    assert p.evaluate("s3:GetObject", "arn:aws:s3:::b/x/anything") is Decision.IMPLICIT_DENY  # [ is literal
    assert p.evaluate("s3:GetObject", "arn:aws:s3:::B/[x]") is Decision.IMPLICIT_DENY
    assert p.evaluate("s3:GetObjects", "arn:aws:s3:::b/[x]") is Decision.IMPLICIT_DENY


def test_not_action_and_not_resource() -> None:
    p = policy({"Effect": "Allow", "NotAction": "sagemaker:Delete*", "NotResource": "arn:aws:s3:::private/*"})
    assert p.evaluate("sagemaker:CreateModel", "*") is Decision.ALLOW
    assert p.evaluate("sagemaker:DeleteModel", "*") is Decision.IMPLICIT_DENY
    assert p.evaluate("s3:GetObject", "arn:aws:s3:::private/k") is Decision.IMPLICIT_DENY


@given(st.lists(st.tuples(st.sampled_from(["Allow", "Deny"]), st.sampled_from(["*", "sagemaker:*", "s3:Get*"]),
                          st.sampled_from(["*", "arn:aws:s3:::b/*"])), min_size=1, max_size=6),
       st.sampled_from(["s3:GetObject", "sagemaker:InvokeEndpoint"]), st.sampled_from(["arn:aws:s3:::b/k", "x"]))
def test_a_matching_deny_always_wins(rules: list[tuple[str, str, str]], action: str, resource: str) -> None:
    p = policy(*({"Effect": e, "Action": a, "Resource": r} for e, a, r in rules))
    matches = [e for e, a, r in rules if
               (a == "*" or action.startswith(a[:-1])) and (r == "*" or resource.startswith(r[:-1]))]
    expected = (Decision.EXPLICIT_DENY if "Deny" in matches else Decision.ALLOW if matches
                else Decision.IMPLICIT_DENY)
    assert p.evaluate(action, resource) is expected


@pytest.mark.parametrize(("document", "message"), [
    ([], "a JSON object"),
    ({"Statement": []}, "non-empty list"),
    ({"Version": "2020-01-01", "Statement": {}}, "Version must be"),
    ({"Statement": {"Effect": "Maybe", "Action": "*", "Resource": "*"}}, "Effect must be Allow or Deny"),
    ({"Statement": {"Effect": "Allow", "Resource": "*"}}, "exactly one of Action and NotAction"),
    ({"Statement": {"Effect": "Allow", "Action": "*"}}, "exactly one of Resource and NotResource"),
    ({"Statement": {"Effect": "Allow", "Action": "InvokeEndpoint", "Resource": "*"}}, "is not service:Action"),
    ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "endpoint/x"}}, "is not an ARN"),
    ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {}}}, "Condition is not"),
    ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Principal": "*"}}, "Principal"),
    ({"Statement": {"Effect": "Allow", "Action": [], "Resource": "*"}}, "non-empty string"),
    ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Extra": 1}}, "unknown keys: Extra"),
])
def test_a_policy_outside_the_grammar_is_refused_with_its_reason(document: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(document)


def test_the_credentials_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}))
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = AKIA1\naws_secret_access_key = s1\n\n"
        "[ops]\naws_access_key_id = AKIA2\naws_secret_access_key = s2\npolicy = p.json\nuser = ops-team\n")
    ring = load_credentials(tmp_path / "credentials")
    assert ring.get("AKIA1") is not None and ring.get("AKIA1").policy is None  # type: ignore[union-attr]
    ops = ring.get("AKIA2")
    assert ops is not None and ops.user == "ops-team" and ops.policy is not None
    assert ops.arn == "arn:aws:iam::123456789012:user/ops-team"


@pytest.mark.parametrize(("text", "message"), [
    ("", "holds no access key"),
    ("[a]\naws_access_key_id = AKIA1\n", "both required"),
    ("[a]\naws_access_key_id = AK IA\naws_secret_access_key = s\n", "not a valid access key id"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\n[b]\naws_access_key_id = AKIA1\n"
     "aws_secret_access_key = t\n", "already used"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\npolicy = missing.json\n", "cannot read the policy"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\nuser = no spaces\n", "not a valid IAM user"),
    ("not an ini file", "malformed"),
])
def test_a_bad_credentials_file_is_refused_with_its_reason(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "credentials").write_text(text)
    with pytest.raises(CredentialsError, match=message):
        load_credentials(tmp_path / "credentials")
    with pytest.raises(CredentialsError, match="Cannot read"):
        load_credentials(tmp_path / "absent")


def test_every_sagemaker_operation_served_names_its_resources() -> None:
    listing = {op for op in OPERATIONS if op.startswith("List") and op != "ListTags"}
    assert set(OPERATIONS) - listing == set(actions.SAGEMAKER_RESOURCES)
    request = actions.sagemaker("CreateEndpoint", {"EndpointName": "Prod-A", "EndpointConfigName": "cfg"}, "eu-west-1")
    assert request == actions.Request("sagemaker:CreateEndpoint", (
        "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/prod-a",
        "arn:aws:sagemaker:eu-west-1:123456789012:endpoint-config/cfg"))
    assert actions.sagemaker("ListEndpoints", {}, "us-east-1").resources == ("*",)


@pytest.mark.parametrize(("method", "path", "query", "headers", "expected"), [
    ("GET", "/", "", {}, ("s3:ListAllMyBuckets", "*")),
    ("GET", "/b", "list-type=2", {}, ("s3:ListBucket", "arn:aws:s3:::b")),
    ("PUT", "/b", "", {}, ("s3:CreateBucket", "arn:aws:s3:::b")),
    ("GET", "/b/a%20b/c", "", {}, ("s3:GetObject", "arn:aws:s3:::b/a b/c")),
    ("HEAD", "/b/k", "", {}, ("s3:GetObject", "arn:aws:s3:::b/k")),
    ("PUT", "/b/k", "partNumber=1&uploadId=u", {}, ("s3:PutObject", "arn:aws:s3:::b/k")),
    ("DELETE", "/b/k", "uploadId=u", {}, ("s3:AbortMultipartUpload", "arn:aws:s3:::b/k")),
    ("POST", "/b", "delete", {}, ("s3:DeleteObject", "arn:aws:s3:::b/*")),
    ("DELETE", "/b", "", {}, ("s3:DeleteBucket", "arn:aws:s3:::b")),
])
def test_s3_requests_map_to_iam_actions(method: str, path: str, query: str, headers: dict[str, str],
                                        expected: tuple[str, str]) -> None:
    request = actions.s3(method, path, query, headers)
    assert (request.action, request.resources[0]) == expected
    copy = actions.s3_copy_source({"x-amz-copy-source": "/src/a%2Bb?versionId=1"})
    assert copy == actions.Request("s3:GetObject", ("arn:aws:s3:::src/a+b",))


def test_runtime_and_logs_requests_map_to_iam_actions() -> None:
    assert actions.runtime("/endpoints/My-Ep/async-invocations", "us-west-2") == actions.Request(
        "sagemaker:InvokeEndpointAsync", ("arn:aws:sagemaker:us-west-2:123456789012:endpoint/my-ep",))
    assert actions.runtime("/endpoints/x/other", "us-west-2") is None
    assert actions.logs("GetLogEvents", {"logGroupName": "/aws/sagemaker/Endpoints/e", "logStreamName": "s"},
                        "us-east-1").resources == (
        "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/e:log-stream:s",)
