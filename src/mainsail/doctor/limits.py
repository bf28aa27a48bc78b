"""SageMaker's limits that a model meets at run time: request and response sizes, the 60 s invocation.

``check_settings`` warns when the container's settings allow more than SageMaker does;
``check_sample_size`` judges a request body against the real-time or serverless limit.
"""

from __future__ import annotations

from typing import Any

from mainsail.doctor.findings import MB, State, human_size

REALTIME_PAYLOAD_LIMIT = 6 * MB
SERVERLESS_PAYLOAD_LIMIT = 4 * MB
RESPONSE_LIMIT = 6 * MB
INVOCATION_TIMEOUT_S = 60.0


def check_settings(settings: Any, state: State) -> None:
    if settings.timeout > INVOCATION_TIMEOUT_S:
        state.add("warning", "limits.timeout",
                  f"SAGEMAKER_MODEL_SERVER_TIMEOUT is {settings.timeout:g} s, but a SageMaker real-time invocation "
                  f"times out after {INVOCATION_TIMEOUT_S:g} s whatever the model server allows",
                  "keep the model under 60 s per request, or use asynchronous inference / batch transform")
    if settings.max_payload_mb > 6:
        state.add("warning", "limits.payload_setting",
                  f"SAGEMAKER_MAX_PAYLOAD_IN_MB is {settings.max_payload_mb:g}, but SageMaker's front end refuses "
                  "real-time requests over 6 MB before they reach the container",
                  "send larger inputs by reference (S3) or use asynchronous inference")



def check_sample_size(size: int, serverless: bool, state: State) -> None:
    limit = SERVERLESS_PAYLOAD_LIMIT if serverless else REALTIME_PAYLOAD_LIMIT
    kind = "serverless" if serverless else "real-time"
    if size > limit:
        state.add("error", "limits.request_size",
                  f"the sample is {human_size(size)}, over SageMaker's {limit // MB} MB {kind} request limit "
                  "(InvokeEndpoint refuses it with a 413 before the model sees it)",
                  "send smaller batches, or pass large inputs by reference (S3 URI) / use asynchronous inference")
    else:
        state.add("ok", "limits.request_size", f"sample {human_size(size)} is within the {limit // MB} MB {kind} limit")
