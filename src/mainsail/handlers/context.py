"""The ``context`` object handed to handler functions that ask for one.

It has the shape of the Multi Model Server context that the SageMaker inference toolkit passes
(``system_properties``, ``get_request_header(idx, key)``, ``set_response_status`` ...), so scripts
written against the toolkit run unchanged. One context is made per request (index 0 is the request);
the one ``model_fn`` receives has no request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mainsail._version import __version__


class RequestProcessor:
    """Per-request headers and response settings, as MMS's ``RequestProcessor``."""

    def __init__(self, request_header: Mapping[str, str]) -> None:
        self._request_header = dict(request_header)
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_header: dict[str, str] = {}

    def get_request_property(self, key: str) -> str | None:
        return self._request_header.get(key.lower())

    def get_request_properties(self) -> dict[str, str]:
        return dict(self._request_header)

    def report_status(self, code: int, reason: str | None = None) -> None:
        self._status_code = int(code)
        self._reason_phrase = reason

    def get_response_status(self) -> tuple[int, str | None]:
        return self._status_code, self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return dict(self._response_header)

    def get_response_header(self, key: str) -> str | None:
        return self._response_header.get(key)


class Context:
    """What a handler function's trailing ``context`` argument receives."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        *,
        gpu_id: int | None = None,
        request_id: str | None = None,
        request_header: Mapping[str, str] | None = None,
    ) -> None:
        self.model_name = model_name
        self.system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "gpu_id": gpu_id,
            "batch_size": 1,
            "server_name": "mainsail",
            "server_version": _server_version(),
        }
        self.request_ids: dict[int, str] = {0: request_id} if request_id else {}
        self.request_processor: list[RequestProcessor] = (
            [RequestProcessor(request_header)] if request_header is not None else []
        )
        self.metrics: Any = None

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        if self.request_processor:
            self.request_processor[idx].report_status(code, phrase)

    def get_response_status(self, idx: int = 0) -> tuple[int, str | None]:
        return self.request_processor[idx].get_response_status()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        if self.request_processor:
            self.request_processor[idx].add_response_property(key.lower(), value)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_response_headers()


def _server_version() -> str:
    return __version__
