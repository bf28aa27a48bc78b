"""Endpoints on a running ``mainsail up``: :class:`Endpoint`, :func:`deploy` and :func:`endpoint`.

An :class:`Endpoint` wraps the boto3 clients of :mod:`mainsail.client.aws`: describe, invoke
(synchronously or asynchronously), wait, update (blue/green) and delete, every botocore error
translated into a :class:`~mainsail.client.errors.MainsailClientError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mainsail.client.aws import (
    DEFAULT_IMAGE,
    DEFAULT_ROLE,
    NEEDS_BOTO3,
    already_exist_message,
    boto3_client,
    create_resources,
    default_url,
    delete_resources,
    deployment_options,
    describe_or_none,
    existing_resources,
    model_data_url,
    translated_errors,
    wait_for_endpoint,
)
from mainsail.client.bodies import Response, encode_body
from mainsail.client.errors import DeploymentFailed, MainsailClientError

_STAMP = r"\d{8}-\d{6}-\d{3}"


class Endpoint:
    """An endpoint of a running ``mainsail up``: describe, invoke, update (blue/green), delete."""

    def __init__(self, name: str, url: str | None = None) -> None:
        self.name = name
        self.url = url or default_url()
        self._clients: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, url={self.url!r})"

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            try:
                self._clients[service] = boto3_client(self.url, service)
            except ImportError:
                raise MainsailClientError(NEEDS_BOTO3, "MissingDependency") from None
            except ValueError as exc:  # botocore rejects a malformed endpoint_url
                raise MainsailClientError(f"bad control plane URL {self.url!r}: {exc}", "InvalidURL") from None
        return self._clients[service]

    @property
    def sm(self) -> Any:
        """The boto3 ``sagemaker`` client this endpoint uses."""
        return self._client("sagemaker")

    @property
    def runtime(self) -> Any:
        """The boto3 ``sagemaker-runtime`` client this endpoint uses."""
        return self._client("sagemaker-runtime")

    @property
    def invoke_url(self) -> str:
        return f"{self.url.rstrip('/')}/endpoints/{self.name}/invocations"

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return translated_errors(self.url)

    # -- reading ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """DescribeEndpoint's answer (without ``ResponseMetadata``)."""
        with self._errors():
            described: dict[str, Any] = self.sm.describe_endpoint(EndpointName=self.name)
        described.pop("ResponseMetadata", None)
        return described

    @property
    def status(self) -> str:
        """``EndpointStatus``: Creating, InService, Updating, Deleting or Failed."""
        return str(self.describe().get("EndpointStatus"))

    def invoke(self, body: Any, content_type: str | None = None, accept: str | None = None,
               target_variant: str | None = None, custom_attributes: str | None = None,
               target_model: str | None = None) -> Response:
        """InvokeEndpoint with ``body`` (see :func:`encode_body` for what a body may be);
        ``target_model``: the archive to use on a multi-model endpoint (relative to its prefix)."""
        payload, sent_type = encode_body(body, content_type)
        kwargs: dict[str, Any] = {"EndpointName": self.name, "Body": payload, "ContentType": sent_type}
        for key, value in (("Accept", accept), ("TargetVariant", target_variant),
                           ("CustomAttributes", custom_attributes), ("TargetModel", target_model)):
            if value is not None:
                kwargs[key] = value
        with self._errors():
            answer = self.runtime.invoke_endpoint(**kwargs)
            data: bytes = answer["Body"].read()
        return Response(data, answer.get("ContentType"), answer.get("InvokedProductionVariant"),
                        custom_attributes=answer.get("CustomAttributes"))

    def invoke_stream(self, body: Any, content_type: str | None = None, accept: str | None = None,
                      target_variant: str | None = None, custom_attributes: str | None = None,
                      ) -> Iterator[bytes]:
        """InvokeEndpointWithResponseStream: the answer's parts (bytes) as they arrive. A failure before
        the first part raises at once; one during the stream (``ModelStreamError``) when it is reached."""
        payload, sent_type = encode_body(body, content_type)
        kwargs: dict[str, Any] = {"EndpointName": self.name, "Body": payload, "ContentType": sent_type}
        for key, value in (("Accept", accept), ("TargetVariant", target_variant),
                           ("CustomAttributes", custom_attributes)):
            if value is not None:
                kwargs[key] = value
        with self._errors():
            answer = self.runtime.invoke_endpoint_with_response_stream(**kwargs)
        return self._parts(answer["Body"])

    def _parts(self, events: Any) -> Iterator[bytes]:
        try:
            with self._errors():
                for event in events:
                    part = event.get("PayloadPart", {}).get("Bytes")
                    if part:
                        yield part
        finally:
            events.close()

    def invoke_async(self, input_location: str, content_type: str | None = None, accept: str | None = None,
                     inference_id: str | None = None) -> dict[str, str]:
        """InvokeEndpointAsync on an asynchronous endpoint: the request is queued; the answer says
        where its result (``OutputLocation``) or failure (``FailureLocation``) will be written."""
        kwargs: dict[str, Any] = {"EndpointName": self.name, "InputLocation": input_location}
        for key, value in (("ContentType", content_type), ("Accept", accept), ("InferenceId", inference_id)):
            if value is not None:
                kwargs[key] = value
        with self._errors():
            answer = self.runtime.invoke_endpoint_async(**kwargs)
        return {k: str(answer[k]) for k in ("InferenceId", "OutputLocation", "FailureLocation") if k in answer}

    # -- waiting ----------------------------------------------------------------------------
    def wait(self, timeout: float = 600, *, doing: str = "updated") -> dict[str, Any]:
        """Wait until the endpoint leaves Creating/Updating; raise ``DeploymentFailed`` unless InService."""
        with self._errors():
            described = wait_for_endpoint(self.sm, self.name, timeout, doing=doing)
        described.pop("ResponseMetadata", None)
        status = str(described.get("EndpointStatus"))
        if status != "InService":
            reason = described.get("FailureReason")
            raise DeploymentFailed(f"endpoint {self.name} is {status}: {reason or '(no reason given)'}",
                                   endpoint=self, status=status, failure_reason=reason)
        return described

    # -- updating ---------------------------------------------------------------------------
    def _stamped(self) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")[:-3]
        return f"{self.name[:63 - len(stamp) - 1]}-{stamp}"

    def _is_ours(self, resource: str) -> bool:
        """Whether a model or config name is one ``deploy`` or ``update`` made for this endpoint."""
        if resource == self.name:
            return True
        match = re.fullmatch(rf"(.+)-({_STAMP})", resource)
        return match is not None and match.group(1) == self.name[:63 - len(match.group(2)) - 1]

    def update(self, model: str | os.PathLike[str] | None = None, instances: int | None = None,
               environment: Mapping[str, str] | None = None, wait: bool = True, *,
               timeout: float = 600) -> Endpoint:
        """Change the model, its environment and/or the instance count; returns ``self``.

        With ``model`` or ``environment``: a new model and endpoint config named ``<name>-<UTC
        timestamp>`` (same image, role and variants; ``environment`` merged over the current one) and
        UpdateEndpoint, which is blue/green: the old instances serve until the new ones answer. With
        only ``instances``: UpdateEndpointWeightsAndCapacities. ``wait`` waits for InService; after a
        blue/green switch the replaced config and models that ``deploy``/``update`` had made for this
        endpoint are deleted. A failed update is rolled back by the control plane: ``DeploymentFailed``
        with the reason (and the new model and config removed).
        """
        if model is None and instances is None and environment is None:
            raise ValueError("nothing to update: give model, instances and/or environment")
        with self._errors():
            described = self.sm.describe_endpoint(EndpointName=self.name)
            variants = described.get("ProductionVariants", [])
            if model is None and environment is None:
                self.sm.update_endpoint_weights_and_capacities(EndpointName=self.name, DesiredWeightsAndCapacities=[
                    {"VariantName": v["VariantName"], "DesiredInstanceCount": instances} for v in variants])
                if wait:
                    self.wait(timeout)
                return self
            old_config_name = str(described["EndpointConfigName"])
            old_config = self.sm.describe_endpoint_config(EndpointConfigName=old_config_name)
            old_variants = old_config.get("ProductionVariants", [])
            old_models = list(dict.fromkeys(str(pv["ModelName"]) for pv in old_variants))
            if len(old_models) != 1:
                raise MainsailClientError(f"endpoint {self.name} serves {len(old_models)} models: "
                                          "update it with boto3's UpdateEndpoint", "Unsupported")
            old_model = self.sm.describe_model(ModelName=old_models[0])
            container = dict(old_model.get("PrimaryContainer") or (old_model.get("Containers") or [{}])[0])
            new_container: dict[str, Any] = {"Image": container.get("Image") or DEFAULT_IMAGE}
            if model is not None:
                new_container["ModelDataUrl"] = model_data_url(model)
            elif container.get("ModelDataUrl"):
                new_container["ModelDataUrl"] = container["ModelDataUrl"]
            elif container.get("ModelDataSource"):
                new_container["ModelDataSource"] = container["ModelDataSource"]
            env = {**container.get("Environment", {}), **{str(k): str(v) for k, v in (environment or {}).items()}}
            if env:
                new_container["Environment"] = env
            current = {str(v.get("VariantName")): v for v in variants}
            new_variants = []
            for pv in old_variants:
                now = current.get(str(pv.get("VariantName")), {})
                count = instances if instances is not None else (now.get("DesiredInstanceCount")
                                                                 or now.get("CurrentInstanceCount")
                                                                 or pv.get("InitialInstanceCount"))
                weight = now.get("DesiredWeight", now.get("CurrentWeight", pv.get("InitialVariantWeight")))
                variant = {**pv, "InitialInstanceCount": count}
                if weight is not None:
                    variant["InitialVariantWeight"] = weight
                new_variants.append(variant)
            new_name = self._stamped()
            undo: list[Callable[[], Any]] = []
            try:
                self.sm.create_model(ModelName=new_name, PrimaryContainer=new_container,
                                     ExecutionRoleArn=old_model.get("ExecutionRoleArn") or DEFAULT_ROLE)
                undo.append(lambda: self.sm.delete_model(ModelName=new_name))
                for variant in new_variants:
                    variant["ModelName"] = new_name
                self.sm.create_endpoint_config(EndpointConfigName=new_name, ProductionVariants=new_variants)
                undo.append(lambda: self.sm.delete_endpoint_config(EndpointConfigName=new_name))
                self.sm.update_endpoint(EndpointName=self.name, EndpointConfigName=new_name)
            except BaseException:
                for step in reversed(undo):
                    with contextlib.suppress(Exception):
                        step()
                raise
            if not wait:
                return self
        after = self.wait(timeout)
        with self._errors():
            if after.get("EndpointConfigName") != new_name:  # rolled back: the old config still serves
                for step in reversed(undo):
                    with contextlib.suppress(Exception):
                        step()
                reason = after.get("FailureReason")
                raise DeploymentFailed(f"update of endpoint {self.name} was rolled back: "
                                       f"{reason or '(no reason given)'}", endpoint=self,
                                       status=str(after.get("EndpointStatus")), failure_reason=reason)
            if self._is_ours(old_config_name):
                with contextlib.suppress(Exception):
                    self.sm.delete_endpoint_config(EndpointConfigName=old_config_name)
            for old in old_models:
                if old != new_name and self._is_ours(old):
                    with contextlib.suppress(Exception):
                        self.sm.delete_model(ModelName=old)
        return self

    # -- deleting ---------------------------------------------------------------------------
    def delete(self, keep_config: bool = False, keep_model: bool = False, wait: bool = True, *,
               timeout: float = 120) -> None:
        """Delete the endpoint, then (unless kept) its endpoint config and its variants' models."""
        with self._errors():
            delete_resources(self.sm, self.name, url=self.url, keep_config=keep_config, keep_model=keep_model,
                             wait=wait, timeout=timeout)


def deploy(model: str | os.PathLike[str], name: str, instances: int = 1, *, url: str | None = None,
           instance_type: str = "ml.m5.large", environment: Mapping[str, str] | None = None,
           image: str | None = None, wait: bool = True, timeout: float = 600,
           serverless_memory_mb: int | None = None, max_concurrency: int | None = None,
           async_output: str | None = None, async_failure: str | None = None,
           multi_model: bool = False) -> Endpoint:
    """Create model, endpoint config and endpoint ``name`` from ``model`` on a running ``mainsail up``.

    ``model``: a model directory, a ``model.tar.gz``, a ``file://`` or an ``s3://`` URL. ``url``:
    the control plane (default ``$MAINSAIL_URL``, else ``http://127.0.0.1:8700``). With ``wait``,
    returns once the endpoint is InService, or raises ``DeploymentFailed`` with its FailureReason
    (the endpoint is left for inspection: ``exc.endpoint.delete()`` removes it) or ``WaitTimeout``.
    A failed create step removes what this call had created. Deployment types: serverless
    (``serverless_memory_mb`` / ``max_concurrency``), asynchronous (``async_output``, an s3:// or
    file:// path for results, ``async_failure`` for failures), multi-model (``multi_model=True``,
    ``model`` a prefix holding model archives, invoked with ``target_model=``).
    """
    endpoint = Endpoint(name, url)
    data_url = model_data_url(model)
    env = {str(k): str(v) for k, v in (environment or {}).items()}
    with endpoint._errors():
        existing = existing_resources(endpoint.sm, name)
        if existing:
            raise MainsailClientError(f"{already_exist_message(existing, name)}: delete with "
                                      f"mainsail.endpoint({name!r}).delete() or pick another name", "AlreadyExists")
        create_resources(endpoint.sm, name, data_url, image or DEFAULT_IMAGE, env, instances, instance_type,
                         **deployment_options(serverless_memory_mb=serverless_memory_mb,
                                              max_concurrency=max_concurrency, async_output=async_output,
                                              async_failure=async_failure, multi_model=multi_model))
    if wait:
        endpoint.wait(timeout, doing="created")
    return endpoint


def endpoint(name: str, url: str | None = None) -> Endpoint:
    """Attach to the existing endpoint ``name`` (raises ``MainsailClientError`` when there is none)."""
    attached = Endpoint(name, url)
    with attached._errors():
        if describe_or_none(attached.sm.describe_endpoint, EndpointName=name) is None:
            raise MainsailClientError(f"endpoint {name} not found at {attached.url}", "NotFound")
    return attached
