"""What a request asks to do, in IAM's terms: the action (``sagemaker:InvokeEndpoint``,
``s3:GetObject``, ...) and the resource ARNs it acts on, as AWS's service authorization reference
defines them for SageMaker, CloudWatch, CloudWatch Logs and S3. A policy decides on these (``policy``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from mainsail.aws.identity import ACCOUNT, sagemaker_arn


@dataclass(frozen=True)
class Request:
    """One action on one or more resources (every resource must be allowed)."""

    action: str
    resources: tuple[str, ...]


#: SageMaker operations to the body members naming the resources they act on (kind, member); an
#: operation not listed here acts on ``*`` (the List operations).
SAGEMAKER_RESOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "CreateModel": (("model", "ModelName"),),
    "DescribeModel": (("model", "ModelName"),),
    "DeleteModel": (("model", "ModelName"),),
    "CreateEndpointConfig": (("endpoint-config", "EndpointConfigName"),),
    "DescribeEndpointConfig": (("endpoint-config", "EndpointConfigName"),),
    "DeleteEndpointConfig": (("endpoint-config", "EndpointConfigName"),),
    "CreateEndpoint": (("endpoint", "EndpointName"), ("endpoint-config", "EndpointConfigName")),
    "UpdateEndpoint": (("endpoint", "EndpointName"), ("endpoint-config", "EndpointConfigName")),
    "DescribeEndpoint": (("endpoint", "EndpointName"),),
    "DeleteEndpoint": (("endpoint", "EndpointName"),),
    "UpdateEndpointWeightsAndCapacities": (("endpoint", "EndpointName"),),
    "CreateTransformJob": (("transform-job", "TransformJobName"),),
    "DescribeTransformJob": (("transform-job", "TransformJobName"),),
    "StopTransformJob": (("transform-job", "TransformJobName"),),
    "AddTags": (("", "ResourceArn"),),
    "DeleteTags": (("", "ResourceArn"),),
    "ListTags": (("", "ResourceArn"),),
}

RUNTIME_ACTIONS = {"/invocations": "InvokeEndpoint", "/async-invocations": "InvokeEndpointAsync",
                   "/invocations-response-stream": "InvokeEndpointWithResponseStream"}


def sagemaker(operation: str, body: Any, region: str) -> Request:
    """A SageMaker API call (``X-Amz-Target: SageMaker.<operation>``)."""
    resources: list[str] = []
    for kind, member in SAGEMAKER_RESOURCES.get(operation, ()):
        value = body.get(member) if isinstance(body, dict) else None
        if isinstance(value, str) and value:
            resources.append(value if not kind else sagemaker_arn(region, kind, value))
    return Request(f"sagemaker:{operation}", tuple(resources) or ("*",))


def runtime(path: str, region: str) -> Request | None:
    """A runtime API call (``POST /endpoints/{name}/...``); ``None`` when ``path`` is not one."""
    for suffix, action in RUNTIME_ACTIONS.items():
        if path.startswith("/endpoints/") and path.endswith(suffix):
            name = path[len("/endpoints/"):-len(suffix)]
            if name:
                return Request(f"sagemaker:{action}", (sagemaker_arn(region, "endpoint", name),))
    return None


def logs(operation: str, body: Any, region: str) -> Request:
    """A CloudWatch Logs call (``X-Amz-Target: Logs_20140328.<operation>``)."""
    fields = body if isinstance(body, dict) else {}
    group = fields.get("logGroupName") or fields.get("logGroupIdentifier")
    if isinstance(group, str) and group.startswith("arn:"):
        resource = group
    elif isinstance(group, str) and group:
        resource = f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{group}"
        stream = fields.get("logStreamName")
        if isinstance(stream, str) and stream:
            resource += f":log-stream:{stream}"
    else:
        resource = f"arn:aws:logs:{region}:{ACCOUNT}:log-group:*"
    return Request(f"logs:{operation}", (resource,))


def cloudwatch(operation: str) -> Request:
    """A CloudWatch call, in any of its protocols: ``cloudwatch:<operation>`` on ``*`` (alarm ARNs are not
    derived from the body: a policy naming alarms must allow ``*`` for mainsail)."""
    return Request(f"cloudwatch:{operation}", ("*",))


def autoscaling(operation: str) -> Request:
    """An Application Auto Scaling call: ``application-autoscaling:<operation>`` on ``*`` (scalable targets
    and policies are not resources IAM names by ARN in most of its actions)."""
    return Request(f"application-autoscaling:{operation}", ("*",))


def s3(method: str, raw_path: str, query_string: str, headers: dict[str, str]) -> Request:
    """An S3 call (path style: ``/bucket/key``)."""
    path = unquote(raw_path or "/")
    bucket, _, key = path.lstrip("/").partition("/")
    query = parse_qs(query_string, keep_blank_values=True)
    if not bucket:
        return Request("s3:ListAllMyBuckets", ("*",))
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if not key:
        if "uploads" in query:
            action = "s3:ListBucketMultipartUploads"
        elif "location" in query:
            action = "s3:GetBucketLocation"
        elif method == "PUT":
            action = "s3:CreateBucket"
        elif method == "DELETE":
            action = "s3:DeleteBucket"
        elif method == "POST" and "delete" in query:
            return Request("s3:DeleteObject", (f"{bucket_arn}/*",))  # the keys are in the body
        else:
            action = "s3:ListBucket"
        return Request(action, (bucket_arn,))
    object_arn = f"{bucket_arn}/{key}"
    if "uploadId" in query and method == "GET":
        return Request("s3:ListMultipartUploadParts", (object_arn,))
    if "uploadId" in query and method == "DELETE":
        return Request("s3:AbortMultipartUpload", (object_arn,))
    if method in ("GET", "HEAD"):
        return Request("s3:GetObject", (object_arn,))
    if method == "DELETE":
        return Request("s3:DeleteObject", (object_arn,))
    return Request("s3:PutObject", (object_arn,))


def s3_copy_source(headers: dict[str, str]) -> Request | None:
    """The read a CopyObject / UploadPartCopy also does (``x-amz-copy-source``)."""
    source = headers.get("x-amz-copy-source")
    if not source:
        return None
    path = unquote(source.split("?", 1)[0]).lstrip("/")
    return Request("s3:GetObject", (f"arn:aws:s3:::{path}",))
