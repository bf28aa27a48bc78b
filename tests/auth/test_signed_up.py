"""``mainsail up`` with credentials: real boto3 clients of every service it serves, signed with the
configured keys, a wrong secret, an unknown key, no signature and a stale date; presigned URLs; signed
``aws-chunked`` uploads; and the IAM policies attached to keys."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from tests.auth.signing import chunked_put, send, sign
from tests.control.helpers import INFERENCE_OK, Plane, deploy, make_model_dir

pytestmark = pytest.mark.slow

ADMIN = ("AKIAADMIN00000000001", "admin-secret")
ALICE = ("AKIAALICE00000000001", "alice-secret")
BOB = ("AKIABOB0000000000001", "bob-secret")
S3 = {"s3": {"addressing_style": "path"}}

CREDENTIALS = f"""
[admin]
aws_access_key_id = {ADMIN[0]}
aws_secret_access_key = {ADMIN[1]}

[alice]
aws_access_key_id = {ALICE[0]}
aws_secret_access_key = {ALICE[1]}
policy = invoke-prod.json

[bob]
aws_access_key_id = {BOB[0]}
aws_secret_access_key = {BOB[1]}
user = bob.builder
policy = policies/operator.json
"""

INVOKE_PROD = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "arn:aws:sagemaker:*:*:endpoint/prod-*"}]}
OPERATOR = {"Version": "2012-10-17", "Statement": [
    {"Sid": "All", "Effect": "Allow", "Action": ["sagemaker:*", "logs:Describe*"], "Resource": "*"},
    {"Sid": "NoDeletes", "Effect": "Deny", "Action": "sagemaker:Delete*", "Resource": "*"},
    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::shared/public/*"}]}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    root = tmp_path_factory.mktemp("signed")
    (root / "policies").mkdir()
    (root / "credentials").write_text(CREDENTIALS)
    (root / "invoke-prod.json").write_text(json.dumps(INVOKE_PROD))
    (root / "policies" / "operator.json").write_text(json.dumps(OPERATOR))
    model = make_model_dir(root / "model", INFERENCE_OK)
    (root / "home").mkdir()
    with Plane(root / "home", credentials=root / "credentials") as plane:
        sm = plane.client("sagemaker", *ADMIN)
        for name in ("prod-a", "dev-b"):
            deploy(sm, name, model)
        for name in ("prod-a", "dev-b"):
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        s3 = plane.client("s3", *ADMIN, **S3)
        s3.create_bucket(Bucket="shared")
        s3.put_object(Bucket="shared", Key="public/a.txt", Body=b"public")
        s3.put_object(Bucket="shared", Key="private/b.txt", Body=b"private")
        yield plane


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


CALLS: dict[str, Any] = {
    "sagemaker": lambda c: c.list_endpoints(),
    "sagemaker-runtime": lambda c: c.invoke_endpoint(EndpointName="prod-a", Body=b"1,2", ContentType="text/csv"),
    "s3": lambda c: c.list_buckets(),
    "logs": lambda c: c.describe_log_groups(),
    "sts": lambda c: c.get_caller_identity(),
}


def test_the_configured_key_works_for_every_service(up: Plane) -> None:
    for service, call in CALLS.items():
        call(up.client(service, *ADMIN, **(S3 if service == "s3" else {})))
    answer = up.client("sagemaker-runtime", *ADMIN).invoke_endpoint(
        EndpointName="prod-a", Body=b"1,0", ContentType="text/csv")["Body"].read()
    assert float(answer.decode().strip("[]\n ")) == pytest.approx(2.0)
    s3 = up.client("s3", *ADMIN, **S3)
    s3.put_object(Bucket="shared", Key="dir/with space+plus&amp=x.txt", Body=b"odd key")
    assert s3.get_object(Bucket="shared", Key="dir/with space+plus&amp=x.txt")["Body"].read() == b"odd key"
    assert [g["logGroupName"] for g in up.client("logs", *ADMIN).describe_log_groups(
        logGroupNamePrefix="/aws/sagemaker/Endpoints/prod-a")["logGroups"]] == ["/aws/sagemaker/Endpoints/prod-a"]


REFUSED = {  # service: (wrong secret, unknown key, unsigned), each (HTTP status, code)
    "sagemaker": ((403, "InvalidSignatureException"), (403, "UnrecognizedClientException"),
                  (403, "MissingAuthenticationTokenException")),
    "sagemaker-runtime": ((403, "InvalidSignatureException"), (403, "UnrecognizedClientException"),
                          (403, "MissingAuthenticationTokenException")),
    "s3": ((403, "SignatureDoesNotMatch"), (403, "InvalidAccessKeyId"), (403, "AccessDenied")),
    "logs": ((403, "InvalidSignatureException"), (403, "UnrecognizedClientException"),
             (403, "MissingAuthenticationTokenException")),
    "sts": ((403, "SignatureDoesNotMatch"), (403, "InvalidClientTokenId"), (403, "MissingAuthenticationToken")),
}


@pytest.mark.parametrize("service", sorted(REFUSED))
def test_a_wrong_secret_an_unknown_key_and_no_signature_are_refused(up: Plane, service: str) -> None:
    extra = S3 if service == "s3" else {}
    wrong, unknown, unsigned = REFUSED[service]
    with pytest.raises(ClientError) as exc:
        CALLS[service](up.client(service, ADMIN[0], "not-the-secret", **extra))
    assert code(exc) == wrong
    with pytest.raises(ClientError) as exc:
        CALLS[service](up.client(service, "AKIANOBODY0000000001", ADMIN[1], **extra))
    assert code(exc) == unknown
    with pytest.raises(ClientError) as exc:
        CALLS[service](up.client(service, signature_version=UNSIGNED, **extra))
    assert code(exc) == unsigned


@pytest.mark.parametrize(("service", "target", "minutes", "expected"), [
    ("sagemaker", "SageMaker.ListEndpoints", 6, (403, "InvalidSignatureException")),
    ("logs", "Logs_20140328.DescribeLogGroups", -6, (403, "InvalidSignatureException")),
    ("s3", None, 16, (403, "RequestTimeTooSkewed")),
    ("sts", None, 6, (403, "SignatureDoesNotMatch")),
])
def test_a_stale_date_is_refused(up: Plane, service: str, target: str | None, minutes: int,
                                 expected: tuple[int, str]) -> None:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)
    if service == "s3":
        method, url, body, headers = "GET", f"{up.url}/shared", b"", {}
    elif service == "sts":
        method, url, body = "POST", f"{up.url}/", b"Action=GetCallerIdentity&Version=2011-06-15"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    else:
        method, url, body = "POST", f"{up.url}/", b"{}"
        headers = {"X-Amz-Target": target or "", "Content-Type": "application/x-amz-json-1.1"}
    fresh = sign(method, url, key=ADMIN[0], secret=ADMIN[1], service=service, headers=headers, body=body)
    assert send(url, method, fresh, body)[0] == 200
    status, _, reply = send(url, method, sign(method, url, key=ADMIN[0], secret=ADMIN[1], service=service,
                                              headers=headers, body=body, when=when), body)
    assert (status, expected[1]) == (expected[0], expected[1]) and expected[1].encode() in reply
    if service in ("sagemaker", "logs"):
        assert b"Signature expired" in reply or b"Signature not yet current" in reply


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_a_presigned_url_works_until_it_expires(up: Plane, version: str) -> None:
    s3 = up.client("s3", *ADMIN, signature_version=version, **S3)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "shared", "Key": "public/a.txt"}, ExpiresIn=2)
    assert httpx.get(url).content == b"public"
    assert httpx.get(url.replace("public", "private", 1)).status_code == 403  # the signature covers the key
    put = s3.generate_presigned_url("put_object", Params={"Bucket": "shared", "Key": "presigned.txt"}, ExpiresIn=60)
    assert httpx.put(put, content=b"uploaded").status_code == 200
    assert up.client("s3", *ADMIN, **S3).get_object(Bucket="shared", Key="presigned.txt")["Body"].read() == b"uploaded"
    time.sleep(3.1)
    expired = httpx.get(url)
    assert expired.status_code == 403
    assert b"<Code>AccessDenied</Code>" in expired.content and b"Request has expired" in expired.content


def test_a_signed_chunked_upload_is_checked_chunk_by_chunk(up: Plane) -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes: four chunks of 8 KiB and the last, empty one
    status, reply = chunked_put(f"{up.url}/shared/chunked.bin", data, key=ADMIN[0], secret=ADMIN[1])
    assert status == 200, reply
    s3 = up.client("s3", *ADMIN, **S3)
    assert s3.get_object(Bucket="shared", Key="chunked.bin")["Body"].read() == data
    status, reply = chunked_put(f"{up.url}/shared/tampered.bin", data, key=ADMIN[0], secret=ADMIN[1], tamper=2)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in reply
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket="shared", Key="tampered.bin")
    assert code(exc)[0] == 404  # nothing of the refused upload was stored


def test_a_body_that_does_not_match_its_signed_hash_is_refused(up: Plane) -> None:
    url = f"{up.url}/shared/mismatch.txt"
    headers = sign("PUT", url, key=ADMIN[0], secret=ADMIN[1], service="s3", body=b"signed body")
    status, _, reply = send(url, "PUT", headers, b"other body!")
    assert status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in reply
    json_url = f"{up.url}/"
    headers = sign("POST", json_url, key=ADMIN[0], secret=ADMIN[1], service="sagemaker", body=b"{}",
                   headers={"X-Amz-Target": "SageMaker.ListModels", "Content-Type": "application/x-amz-json-1.1"})
    status, _, reply = send(json_url, "POST", headers, b'{"MaxResults": 1}')
    assert status == 403 and b"InvalidSignatureException" in reply


def test_a_policy_lets_a_key_invoke_prod_endpoints_only(up: Plane) -> None:
    runtime = up.client("sagemaker-runtime", *ALICE)
    assert runtime.invoke_endpoint(EndpointName="prod-a", Body=b"0,1", ContentType="text/csv")["Body"].read()
    with pytest.raises(ClientError) as exc:
        runtime.invoke_endpoint(EndpointName="dev-b", Body=b"0,1", ContentType="text/csv")
    assert code(exc) == (400, "AccessDeniedException")
    assert exc.value.response["Error"]["Message"] == (
        "User: arn:aws:iam::123456789012:user/alice is not authorized to perform: sagemaker:InvokeEndpoint on "
        "resource: arn:aws:sagemaker:us-east-1:123456789012:endpoint/dev-b because no identity-based policy "
        "allows the sagemaker:InvokeEndpoint action")
    with pytest.raises(ClientError) as exc:
        up.client("sagemaker", *ALICE).describe_endpoint(EndpointName="prod-a")
    assert code(exc) == (400, "AccessDeniedException")
    with pytest.raises(ClientError) as exc:
        up.client("s3", *ALICE, **S3).get_object(Bucket="shared", Key="public/a.txt")
    assert code(exc) == (403, "AccessDenied")
    with pytest.raises(ClientError) as exc:
        up.client("logs", *ALICE).describe_log_groups()
    assert code(exc) == (400, "AccessDeniedException")


def test_an_explicit_deny_overrides_an_allow(up: Plane) -> None:
    sm = up.client("sagemaker", *BOB)
    assert sm.describe_endpoint(EndpointName="dev-b")["EndpointStatus"] == "InService"
    with pytest.raises(ClientError) as exc:
        sm.delete_endpoint(EndpointName="dev-b")
    assert code(exc) == (400, "AccessDeniedException")
    assert "with an explicit deny in an identity-based policy" in exc.value.response["Error"]["Message"]
    assert "arn:aws:sagemaker:us-east-1:123456789012:endpoint/dev-b" in exc.value.response["Error"]["Message"]
    s3 = up.client("s3", *BOB, **S3)
    assert s3.get_object(Bucket="shared", Key="public/a.txt")["Body"].read() == b"public"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="shared", Key="private/b.txt")
    assert code(exc) == (403, "AccessDenied")
    assert up.client("sagemaker", *ADMIN).describe_endpoint(EndpointName="dev-b")["EndpointStatus"] == "InService"


def test_get_caller_identity_answers_the_signing_key(up: Plane) -> None:
    for (key, secret), user in ((ADMIN, "admin"), (ALICE, "alice"), (BOB, "bob.builder")):
        identity = up.client("sts", key, secret).get_caller_identity()
        assert identity["Account"] == "123456789012"
        assert identity["Arn"] == f"arn:aws:iam::123456789012:user/{user}"
        assert identity["UserId"].startswith("AIDA") and len(identity["UserId"]) == 21
    assert len({up.client("sts", *k).get_caller_identity()["UserId"] for k in (ADMIN, ALICE, BOB)}) == 3


def test_metrics_are_served_unsigned_to_loopback_clients_only(up: Plane) -> None:
    assert httpx.get(f"{up.url}/metrics").status_code == 200  # this test's client is on loopback
    headers = sign("GET", f"{up.url}/metrics", key=ADMIN[0], secret="wrong", service="sagemaker")
    assert send(f"{up.url}/metrics", "GET", headers)[0] == 403
