"""Model and EndpointConfig records: validation as the real service does it, ARNs, stored shapes."""

from __future__ import annotations

import re
import time
from typing import Any

from mainsail.aws.errors import ValidationException
from mainsail.aws.identity import sagemaker_arn
from mainsail.aws.protocol import Violations

MODEL = "model"
ENDPOINT_CONFIG = "endpoint-config"
TRANSFORM_JOB = "transform-job"  # its operations: mainsail.jobs.transform; tagged like the others
KIND_LABELS = {MODEL: "model", ENDPOINT_CONFIG: "endpoint configuration", "endpoint": "endpoint",
               TRANSFORM_JOB: "transform job"}

NAME_PATTERN = "^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
MODEL_NAME_PATTERN = "^[a-zA-Z0-9]([\\-a-zA-Z0-9]*[a-zA-Z0-9])?"
ROLE_PATTERN = "^arn:aws[a-z\\-]*:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+"
URL_PATTERN = "^(https|s3)://([^/]+)/?(.*)"
# A mainsail extension to the real service: model data already on this machine.
LOCAL_MODEL_DATA = re.compile(r"^(file://)?/.*")


def local_path(value: object) -> bool:
    """Whether ``value`` is a local path or ``file://`` URL: where mainsail takes one as well as S3."""
    return isinstance(value, str) and LOCAL_MODEL_DATA.match(value) is not None


#: mainsail's extensions of the service model's domains (see :class:`mainsail.aws.shapes.InputCheck`)
EXTENSIONS = {
    ("CreateModel", "primaryContainer.modelDataUrl"): local_path,
    ("CreateModel", "containers.*.member.modelDataUrl"): local_path,
    ("CreateModel", "primaryContainer.modelDataSource.s3DataSource.s3Uri"): local_path,
    ("CreateModel", "containers.*.member.modelDataSource.s3DataSource.s3Uri"): local_path,
}
IMAGE_PATTERN = "^[\\S]+"
TAG_PATTERN = "^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)"
_TAG_RE = re.compile(r"^[\w\s.:/=+\-@]*$")

INSTANCE_TYPES: tuple[str, ...] = tuple(
    """
    ml.t2.medium ml.t2.large ml.t2.xlarge ml.t2.2xlarge ml.m4.xlarge ml.m4.2xlarge ml.m4.4xlarge
    ml.m4.10xlarge ml.m4.16xlarge ml.m5.large ml.m5.xlarge ml.m5.2xlarge ml.m5.4xlarge
    ml.m5.12xlarge ml.m5.24xlarge ml.m5d.large ml.m5d.xlarge ml.m5d.2xlarge ml.m5d.4xlarge
    ml.m5d.12xlarge ml.m5d.24xlarge ml.c4.large ml.c4.xlarge ml.c4.2xlarge ml.c4.4xlarge
    ml.c4.8xlarge ml.p2.xlarge ml.p2.8xlarge ml.p2.16xlarge ml.p3.2xlarge ml.p3.8xlarge
    ml.p3.16xlarge ml.c5.large ml.c5.xlarge ml.c5.2xlarge ml.c5.4xlarge ml.c5.9xlarge ml.c5.18xlarge
    ml.c5d.large ml.c5d.xlarge ml.c5d.2xlarge ml.c5d.4xlarge ml.c5d.9xlarge ml.c5d.18xlarge
    ml.g4dn.xlarge ml.g4dn.2xlarge ml.g4dn.4xlarge ml.g4dn.8xlarge ml.g4dn.12xlarge ml.g4dn.16xlarge
    ml.r5.large ml.r5.xlarge ml.r5.2xlarge ml.r5.4xlarge ml.r5.12xlarge ml.r5.24xlarge ml.r5d.large
    ml.r5d.xlarge ml.r5d.2xlarge ml.r5d.4xlarge ml.r5d.12xlarge ml.r5d.24xlarge ml.inf1.xlarge
    ml.inf1.2xlarge ml.inf1.6xlarge ml.inf1.24xlarge ml.dl1.24xlarge ml.c6i.large ml.c6i.xlarge
    ml.c6i.2xlarge ml.c6i.4xlarge ml.c6i.8xlarge ml.c6i.12xlarge ml.c6i.16xlarge ml.c6i.24xlarge
    ml.c6i.32xlarge ml.m6i.large ml.m6i.xlarge ml.m6i.2xlarge ml.m6i.4xlarge ml.m6i.8xlarge
    ml.m6i.12xlarge ml.m6i.16xlarge ml.m6i.24xlarge ml.m6i.32xlarge ml.r6i.large ml.r6i.xlarge
    ml.r6i.2xlarge ml.r6i.4xlarge ml.r6i.8xlarge ml.r6i.12xlarge ml.r6i.16xlarge ml.r6i.24xlarge
    ml.r6i.32xlarge ml.g5.xlarge ml.g5.2xlarge ml.g5.4xlarge ml.g5.8xlarge ml.g5.12xlarge
    ml.g5.16xlarge ml.g5.24xlarge ml.g5.48xlarge ml.g6.xlarge ml.g6.2xlarge ml.g6.4xlarge
    ml.g6.8xlarge ml.g6.12xlarge ml.g6.16xlarge ml.g6.24xlarge ml.g6.48xlarge ml.r8g.medium
    ml.r8g.large ml.r8g.xlarge ml.r8g.2xlarge ml.r8g.4xlarge ml.r8g.8xlarge ml.r8g.12xlarge
    ml.r8g.16xlarge ml.r8g.24xlarge ml.r8g.48xlarge ml.g6e.xlarge ml.g6e.2xlarge ml.g6e.4xlarge
    ml.g6e.8xlarge ml.g6e.12xlarge ml.g6e.16xlarge ml.g6e.24xlarge ml.g6e.48xlarge ml.g7e.2xlarge
    ml.g7e.4xlarge ml.g7e.8xlarge ml.g7e.12xlarge ml.g7e.24xlarge ml.g7e.48xlarge ml.g7.2xlarge
    ml.g7.4xlarge ml.g7.8xlarge ml.g7.12xlarge ml.g7.24xlarge ml.g7.48xlarge ml.p4d.24xlarge
    ml.c7g.large ml.c7g.xlarge ml.c7g.2xlarge ml.c7g.4xlarge ml.c7g.8xlarge ml.c7g.12xlarge
    ml.c7g.16xlarge ml.m6g.large ml.m6g.xlarge ml.m6g.2xlarge ml.m6g.4xlarge ml.m6g.8xlarge
    ml.m6g.12xlarge ml.m6g.16xlarge ml.m6gd.large ml.m6gd.xlarge ml.m6gd.2xlarge ml.m6gd.4xlarge
    ml.m6gd.8xlarge ml.m6gd.12xlarge ml.m6gd.16xlarge ml.c6g.large ml.c6g.xlarge ml.c6g.2xlarge
    ml.c6g.4xlarge ml.c6g.8xlarge ml.c6g.12xlarge ml.c6g.16xlarge ml.c6gd.large ml.c6gd.xlarge
    ml.c6gd.2xlarge ml.c6gd.4xlarge ml.c6gd.8xlarge ml.c6gd.12xlarge ml.c6gd.16xlarge ml.c6gn.large
    ml.c6gn.xlarge ml.c6gn.2xlarge ml.c6gn.4xlarge ml.c6gn.8xlarge ml.c6gn.12xlarge ml.c6gn.16xlarge
    ml.r6g.large ml.r6g.xlarge ml.r6g.2xlarge ml.r6g.4xlarge ml.r6g.8xlarge ml.r6g.12xlarge
    ml.r6g.16xlarge ml.r6gd.large ml.r6gd.xlarge ml.r6gd.2xlarge ml.r6gd.4xlarge ml.r6gd.8xlarge
    ml.r6gd.12xlarge ml.r6gd.16xlarge ml.p4de.24xlarge ml.trn1.2xlarge ml.trn1.32xlarge
    ml.trn1n.32xlarge ml.trn2.48xlarge ml.inf2.xlarge ml.inf2.8xlarge ml.inf2.24xlarge
    ml.inf2.48xlarge ml.p5.48xlarge ml.p5e.48xlarge ml.p5en.48xlarge ml.m7i.large ml.m7i.xlarge
    ml.m7i.2xlarge ml.m7i.4xlarge ml.m7i.8xlarge ml.m7i.12xlarge ml.m7i.16xlarge ml.m7i.24xlarge
    ml.m7i.48xlarge ml.c7i.large ml.c7i.xlarge ml.c7i.2xlarge ml.c7i.4xlarge ml.c7i.8xlarge
    ml.c7i.12xlarge ml.c7i.16xlarge ml.c7i.24xlarge ml.c7i.48xlarge ml.r7i.large ml.r7i.xlarge
    ml.r7i.2xlarge ml.r7i.4xlarge ml.r7i.8xlarge ml.r7i.12xlarge ml.r7i.16xlarge ml.r7i.24xlarge
    ml.r7i.48xlarge ml.c8g.medium ml.c8g.large ml.c8g.xlarge ml.c8g.2xlarge ml.c8g.4xlarge
    ml.c8g.8xlarge ml.c8g.12xlarge ml.c8g.16xlarge ml.c8g.24xlarge ml.c8g.48xlarge ml.r7gd.medium
    ml.r7gd.large ml.r7gd.xlarge ml.r7gd.2xlarge ml.r7gd.4xlarge ml.r7gd.8xlarge ml.r7gd.12xlarge
    ml.r7gd.16xlarge ml.m8g.medium ml.m8g.large ml.m8g.xlarge ml.m8g.2xlarge ml.m8g.4xlarge
    ml.m8g.8xlarge ml.m8g.12xlarge ml.m8g.16xlarge ml.m8g.24xlarge ml.m8g.48xlarge ml.c6in.large
    ml.c6in.xlarge ml.c6in.2xlarge ml.c6in.4xlarge ml.c6in.8xlarge ml.c6in.12xlarge ml.c6in.16xlarge
    ml.c6in.24xlarge ml.c6in.32xlarge ml.p6-b200.48xlarge ml.p6-b300.48xlarge ml.p6e-gb200.36xlarge
    ml.p5.4xlarge
    """.split()
)
_INSTANCE_TYPE_SET = frozenset(INSTANCE_TYPES)


def not_found(kind: str, resource_arn: str) -> ValidationException:
    """``Could not find model "arn:..."."`` as SageMaker words it."""
    return ValidationException(f'Could not find {KIND_LABELS[kind]} "{resource_arn}".')


def already_exists(kind: str, resource_arn: str) -> ValidationException:
    """``Cannot create already existing model "arn:..."."`` as SageMaker words it."""
    return ValidationException(f'Cannot create already existing {KIND_LABELS[kind]} "{resource_arn}".')


def validate_name(v: Violations, value: Any, path: str, pattern: str = NAME_PATTERN) -> None:
    """Check a resource name at ``path`` (required, <= 63 characters, the name pattern)."""
    if v.required(value, path):
        v.string(value, path, max_len=63, pattern=pattern, regex=re.compile(pattern.lstrip("^")))


def validate_tags(v: Violations, tags: Any, path: str = "tags") -> None:
    """Check a TagList: at most 50 tags, key 1..128 and value <= 256 characters."""
    v.length(tags, path, maximum=50)
    if not isinstance(tags, list):
        return
    for i, tag in enumerate(tags, start=1):
        if not isinstance(tag, dict):
            v.add(tag, f"{path}.{i}.member", "Member must be a structure")
            continue
        key, value = tag.get("Key"), tag.get("Value")
        if v.required(key, f"{path}.{i}.member.key"):
            v.string(key, f"{path}.{i}.member.key", max_len=128, pattern=TAG_PATTERN, regex=_TAG_RE)
            if isinstance(key, str) and not key:
                v.add(key, f"{path}.{i}.member.key",
                      "Member must have length greater than or equal to 1")
        if v.required(value, f"{path}.{i}.member.value"):
            v.string(value, f"{path}.{i}.member.value", max_len=256, pattern=TAG_PATTERN,
                     regex=_TAG_RE)


def _validate_container(v: Violations, container: Any, path: str) -> None:
    if not isinstance(container, dict):
        v.add(container, path, "Member must be a structure")
        return
    v.string(container.get("Image"), f"{path}.image", max_len=255, pattern=IMAGE_PATTERN)
    url = container.get("ModelDataUrl")
    local = isinstance(url, str) and LOCAL_MODEL_DATA.match(url) is not None
    v.string(url, f"{path}.modelDataUrl", max_len=1024, pattern=None if local else URL_PATTERN)
    env = container.get("Environment")
    if env is not None and (not isinstance(env, dict) or len(env) > 100):
        v.add("{...}", f"{path}.environment", "Member must have length less than or equal to 100")
    mode = container.get("Mode")
    if mode is not None and mode not in ("SingleModel", "MultiModel"):
        v.add(mode, f"{path}.mode", "Member must satisfy enum value set: [SingleModel, MultiModel]")


def new_model(body: dict[str, Any], region: str) -> dict[str, Any]:
    """Validate a CreateModel request and build the stored record (the Describe shape plus Tags)."""
    v = Violations()
    name = body.get("ModelName")
    validate_name(v, name, "modelName", MODEL_NAME_PATTERN)
    if body.get("PrimaryContainer") is not None:
        _validate_container(v, body["PrimaryContainer"], "primaryContainer")
    containers = body.get("Containers")
    v.length(containers, "containers", maximum=15)
    if isinstance(containers, list):
        for i, c in enumerate(containers, start=1):
            _validate_container(v, c, f"containers.{i}.member")
    v.string(body.get("ExecutionRoleArn"), "executionRoleArn", max_len=2048, pattern=ROLE_PATTERN)
    validate_tags(v, body.get("Tags"))
    v.raise_if_any()
    assert isinstance(name, str)
    if body.get("PrimaryContainer") is not None and containers:
        raise ValidationException("PrimaryContainer and Containers cannot both be specified.")
    record: dict[str, Any] = {"ModelName": name}
    for key in ("PrimaryContainer", "Containers", "InferenceExecutionConfig", "ExecutionRoleArn",
                "VpcConfig"):
        if body.get(key):
            record[key] = body[key]
    record["CreationTime"] = time.time()
    record["ModelArn"] = sagemaker_arn(region, MODEL, name)
    record["EnableNetworkIsolation"] = bool(body.get("EnableNetworkIsolation", False))
    record["Tags"] = list(body.get("Tags") or [])
    return record


def _validate_variant(v: Violations, variant: Any, path: str) -> None:
    if not isinstance(variant, dict):
        v.add(variant, path, "Member must be a structure")
        return
    validate_name(v, variant.get("VariantName"), f"{path}.variantName")
    v.string(variant.get("ModelName"), f"{path}.modelName", max_len=63,
             pattern=MODEL_NAME_PATTERN, regex=re.compile(MODEL_NAME_PATTERN.lstrip("^")))
    itype = variant.get("InstanceType")
    if itype is not None and itype not in _INSTANCE_TYPE_SET:
        v.add(itype, f"{path}.instanceType",
              "Member must satisfy enum value set: [" + ", ".join(INSTANCE_TYPES) + "]")
    v.number(variant.get("InitialInstanceCount"), f"{path}.initialInstanceCount", minimum=1)
    v.number(variant.get("InitialVariantWeight"), f"{path}.initialVariantWeight", minimum=0)
    serverless = variant.get("ServerlessConfig")
    if isinstance(serverless, dict):
        memory = serverless.get("MemorySizeInMB")
        v.number(memory, f"{path}.serverlessConfig.memorySizeInMB", minimum=1024, maximum=6144)
        if isinstance(memory, (int, float)) and memory % 1024:  # the model's range; SageMaker also wants steps
            v.add(memory, f"{path}.serverlessConfig.memorySizeInMB",
                  "Member must be one of 1024, 2048, 3072, 4096, 5120, 6144 (MB)")
        v.number(serverless.get("MaxConcurrency"), f"{path}.serverlessConfig.maxConcurrency",
                 minimum=1, maximum=200)


def _variant_record(variant: dict[str, Any]) -> dict[str, Any]:
    if variant.get("ServerlessConfig") is None and (
        variant.get("InstanceType") is None or variant.get("InitialInstanceCount") is None
    ):
        raise ValidationException(
            f"Either ServerlessConfig or InstanceType and InitialInstanceCount must be specified "
            f"for production variant {variant.get('VariantName')}."
        )
    if variant.get("ServerlessConfig") is not None and variant.get("InstanceType") is not None:
        raise ValidationException(
            f"ServerlessConfig and InstanceType cannot both be specified for production variant "
            f"{variant.get('VariantName')}."
        )
    record = {k: val for k, val in variant.items() if val is not None and val != {}}
    if "InitialVariantWeight" not in record:
        record["InitialVariantWeight"] = 1.0
    return record


def new_endpoint_config(body: dict[str, Any], region: str) -> dict[str, Any]:
    """Validate a CreateEndpointConfig request and build the stored record (Describe shape + Tags).

    The caller checks that each variant's model exists.
    """
    v = Violations()
    name = body.get("EndpointConfigName")
    validate_name(v, name, "endpointConfigName")
    variants = body.get("ProductionVariants")
    if v.required(variants, "productionVariants"):
        v.length(variants, "productionVariants", minimum=1, maximum=10)
    for key, path in (("ProductionVariants", "productionVariants"),
                      ("ShadowProductionVariants", "shadowProductionVariants")):
        group = body.get(key)
        if key == "ShadowProductionVariants":
            v.length(group, path, maximum=10)
        if isinstance(group, list):
            for i, variant in enumerate(group, start=1):
                _validate_variant(v, variant, f"{path}.{i}.member")
    v.string(body.get("ExecutionRoleArn"), "executionRoleArn", max_len=2048, pattern=ROLE_PATTERN)
    validate_tags(v, body.get("Tags"))
    v.raise_if_any()
    assert isinstance(name, str) and isinstance(variants, list)
    all_variants = [*variants, *(body.get("ShadowProductionVariants") or [])]
    names = [variant["VariantName"] for variant in all_variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValidationException(f"Duplicate variant names found: {', '.join(duplicates)}.")
    record: dict[str, Any] = {
        "EndpointConfigName": name,
        "EndpointConfigArn": sagemaker_arn(region, ENDPOINT_CONFIG, name),
        "ProductionVariants": [_variant_record(variant) for variant in variants],
    }
    if body.get("ShadowProductionVariants"):
        record["ShadowProductionVariants"] = [
            _variant_record(variant) for variant in body["ShadowProductionVariants"]
        ]
    for key in ("DataCaptureConfig", "KmsKeyId", "AsyncInferenceConfig", "ExplainerConfig",
                "ExecutionRoleArn", "VpcConfig", "MetricsConfig"):
        if body.get(key):
            record[key] = body[key]
    if body.get("EnableNetworkIsolation") is not None:
        record["EnableNetworkIsolation"] = bool(body["EnableNetworkIsolation"])
    record["CreationTime"] = time.time()
    record["Tags"] = list(body.get("Tags") or [])
    return record


def variant_model_names(record: dict[str, Any]) -> list[str]:
    """The model names an endpoint-config record's variants refer to."""
    variants = [*record.get("ProductionVariants", []), *record.get("ShadowProductionVariants", [])]
    return [variant["ModelName"] for variant in variants if variant.get("ModelName")]
