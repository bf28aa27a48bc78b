"""``sagemaker_containers`` ``worker.Response``: what the scikit-learn and XGBoost containers' Flask
app sends as it is. Here a small object with Flask's ``Response`` constructor and the parts mainsail
reads when ``output_fn`` returns it (:func:`mainsail.handlers.replies.response_object`): the status,
the body (``get_data``), the content type (charset added to text types as werkzeug does) and the
headers. Flask's ``Request`` and ``Worker`` (the container's own app) are not provided."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import _content_types

_TEXT_LIKE = ("application/ecmascript", "application/javascript", "application/sql", "application/xml",
              "application/xml-dtd", "application/xml-external-parsed-entity")


def _with_charset(mimetype: str) -> str:
    """werkzeug's ``get_content_type``: text types get ``; charset=utf-8``."""
    if mimetype.startswith("text/") or mimetype in _TEXT_LIKE or mimetype.endswith("+xml"):
        if "charset" not in mimetype:
            return f"{mimetype}; charset=utf-8"
    return mimetype


class Response:
    """A response ``output_fn`` returns: ``response`` (bytes, str or an iterable of them), ``status``
    (an int or ``"200 OK"``), ``headers`` and ``mimetype`` (default ``application/json``)."""

    default_mimetype = _content_types.JSON

    def __init__(self, response: Any = None, accept: str | None = None, status: int | str = 200,
                 headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                 mimetype: str | None = None, direct_passthrough: bool = False) -> None:
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        self.headers: dict[str, str] = {str(k): str(v) for k, v in pairs}
        given = next((v for k, v in self.headers.items() if k.lower() == "content-type"), None)
        self.mimetype = (mimetype or (given.split(";")[0].strip() if given else None) or self.default_mimetype)
        self.content_type = given if given and not mimetype else _with_charset(self.mimetype)
        self.status_code = int(str(status).split()[0])
        self.response = response
        self.direct_passthrough = direct_passthrough

    @property
    def status(self) -> str:
        return str(self.status_code)

    def get_data(self, as_text: bool = False) -> bytes | str:
        """The body, joined (werkzeug encodes str parts as utf-8)."""
        parts = [] if self.response is None else [self.response] \
            if isinstance(self.response, (bytes, bytearray, str)) else list(self.response)
        data = b"".join(p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in parts)
        return data.decode("utf-8") if as_text else data
