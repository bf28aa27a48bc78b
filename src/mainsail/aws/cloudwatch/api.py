"""CloudWatch on ``mainsail up``'s port: the three wire protocols (:mod:`.wire`) in front of the one
operation core (:class:`~mainsail.aws.cloudwatch.service.CloudWatch`).

- smithy-rpc-v2-cbor: ``POST /service/GraniteServiceVersion20100801/operation/<Op>`` (:attr:`CloudWatchApi.route`)
- AWS JSON 1.0: ``POST /`` with ``X-Amz-Target: GraniteServiceVersion20100801.<Op>`` (:meth:`serve_json`)
- query: form-encoded ``POST /`` with ``Version=2010-08-01`` (:meth:`serve_query`)

Errors carry ``x-amzn-query-error: <Code>;<Sender|Receiver>`` (the service is ``awsQueryCompatible``),
so every client sees the query protocol's error codes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.aws.cloudwatch import wire
from mainsail.aws.cloudwatch.errors import InternalServiceError, wire_error
from mainsail.aws.cloudwatch.service import CloudWatch
from mainsail.aws.errors import ControlError, SerializationException
from mainsail.aws.identity import region_of

logger = logging.getLogger(__name__)

_CBOR, _JSON, _QUERY = "cbor", "json", "query"


def is_json_target(target: str | None) -> bool:
    """Whether an ``X-Amz-Target`` names a CloudWatch operation (AWS JSON 1.0)."""
    return bool(target) and str(target).startswith(wire.TARGET_PREFIX + ".")


class CloudWatchApi:
    """Reads a call in any of the three protocols, runs it (in a thread: SQLite and the first load of the
    model block) and answers in the protocol it came in."""

    def __init__(self, service: CloudWatch) -> None:
        self.service = service
        self.route = Route(f"/service/{wire.TARGET_PREFIX}/operation/{{operation}}", self._serve_cbor,
                           methods=["POST"])

    async def _serve_cbor(self, request: Request) -> Response:
        body = await request.body()
        return await run_in_threadpool(self.answer, _CBOR, str(request.path_params["operation"]), body,
                                       region_of(request.headers.get("authorization")))

    async def serve_json(self, request: Request) -> Response:
        """A ``POST /`` whose ``X-Amz-Target`` :func:`is_json_target`."""
        operation = str(request.headers.get("x-amz-target", "")).split(".", 1)[1]
        body = await request.body()
        return await run_in_threadpool(self.answer, _JSON, operation, body,
                                       region_of(request.headers.get("authorization")))

    async def serve_query(self, params: Mapping[str, str], request: Request) -> Response:
        """A form-encoded ``POST /`` whose ``params`` :func:`~.wire.is_query_call` says are CloudWatch's."""
        return await run_in_threadpool(self.answer, _QUERY, params.get("Action", ""), params,
                                       region_of(request.headers.get("authorization")))

    def answer(self, protocol: str, operation: str, raw: Any, region: str) -> Response:
        """Decode, run and encode one call (blocking)."""
        request_id = str(uuid.uuid4())
        try:
            model = self.service.operation_model(operation)
            shape = model.input_shape
            if protocol == _QUERY:
                body = wire.query_input(shape, raw) if shape is not None else {}
            else:
                decoded = wire.decode_cbor(raw) if protocol == _CBOR else wire.decode_json(raw)
                if not isinstance(decoded, dict):
                    raise SerializationException("The request body must be a structure.")
                body = wire.document(shape, decoded) if shape is not None else {}
            result = self.service.call(operation, body, region)
            return self._result(protocol, operation, model.output_shape, result, request_id)
        except ControlError as exc:
            return self._error(protocol, exc, request_id)
        except Exception as exc:
            logger.exception("CloudWatch %s failed", operation)
            return self._error(protocol, InternalServiceError(f"{type(exc).__name__}: {exc}"), request_id)

    @staticmethod
    def _result(protocol: str, operation: str, shape: Any, result: Mapping[str, Any], request_id: str) -> Response:
        headers = {"x-amzn-RequestId": request_id}
        if protocol == _CBOR:
            headers["smithy-protocol"] = "rpc-v2-cbor"
            return Response(wire.encode_cbor(shape, result), media_type=wire.CBOR_TYPE, headers=headers)
        if protocol == _JSON:
            return Response(wire.encode_json(shape, result), media_type=wire.JSON_TYPE, headers=headers)
        return Response(wire.encode_xml(operation, shape, result, request_id), media_type=wire.XML_TYPE,
                        headers=headers)

    @staticmethod
    def _error(protocol: str, exc: ControlError, request_id: str) -> Response:
        code, type_, sender = wire_error(exc)
        headers = {"x-amzn-RequestId": request_id,
                   "x-amzn-query-error": f"{code};{'Sender' if sender else 'Receiver'}"}
        if protocol == _QUERY:
            return Response(wire.encode_xml_error(code, sender, exc.message, request_id), status_code=exc.status_code,
                            media_type=wire.XML_TYPE, headers=headers)
        if protocol == _CBOR:
            headers["smithy-protocol"] = "rpc-v2-cbor"
        return Response(wire.encode_error(type_, exc, protocol == _CBOR), status_code=exc.status_code,
                        media_type=wire.CBOR_TYPE if protocol == _CBOR else wire.JSON_TYPE, headers=headers)
