"""The error tree. Every error mainsail raises on purpose is a ``MainsailError``.

Each class carries the HTTP status it maps to and a short error code. Nothing here imports a web
framework: the serving layer renders these into ``{"error": code, "message": message}`` bodies.
"""

from __future__ import annotations


class MainsailError(Exception):
    """Base of every error mainsail raises on purpose."""

    status_code: int = 500
    code: str = "InternalError"
    model_seconds: float | None = None
    """Time spent in the handler before it failed, when it failed there (for ModelLatency)."""
    close_connection: bool = False
    """The request body was left partly unread (``mainsail.drain``): the answer closes the connection."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class BadRequest(MainsailError):
    """The request body cannot be decoded or does not fit the model (400)."""

    status_code = 400
    code = "BadRequest"


class MissingColumns(BadRequest):
    """Required input columns are absent (400); the message names them."""

    code = "MissingColumns"

    def __init__(self, missing: list[str]) -> None:
        self.missing = list(missing)
        super().__init__(f"missing required column(s): {', '.join(self.missing)}")


class NotFound(MainsailError):
    """The requested route or model does not exist (404)."""

    status_code = 404
    code = "NotFound"


class PayloadTooLarge(MainsailError):
    """The request body exceeds the configured limit (413)."""

    status_code = 413
    code = "PayloadTooLarge"

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(
            f"request body exceeds the limit of {limit_bytes} bytes ({limit_bytes / 1024 / 1024:g} MB)"
        )


class UnsupportedContentType(MainsailError):
    """No decoder for the request's Content-Type (415)."""

    status_code = 415
    code = "UnsupportedContentType"

    def __init__(self, content_type: str | None, supported: list[str] | None = None) -> None:
        self.content_type = content_type
        hint = f"; supported: {', '.join(supported)}" if supported else ""
        super().__init__(f"content type {content_type!r} is not supported{hint}")


class UnsupportedAccept(MainsailError):
    """No encoder for any type the request's Accept lists (415)."""

    status_code = 415
    code = "UnsupportedAccept"

    def __init__(self, accept: str | None, supported: list[str] | None = None) -> None:
        self.accept = accept
        hint = f"; supported: {', '.join(supported)}" if supported else ""
        super().__init__(f"accept type {accept!r} is not supported{hint}")


class ModelError(MainsailError):
    """The handler (user script or built-in) raised while serving a request (500)."""

    status_code = 500
    code = "ModelError"


class ModelLoadError(MainsailError):
    """The model could not be loaded; the server cannot become ready."""

    status_code = 500
    code = "ModelLoadError"


class ModelNotReady(MainsailError):
    """The model is not loaded yet (503)."""

    status_code = 503
    code = "ModelNotReady"


# -- the multi-model container (``mainsail serve --multi-model``) ----------------------------------


class ModelNotLoaded(MainsailError):
    """No model of that name is loaded (404)."""

    status_code = 404
    code = "ModelNotFound"

    def __init__(self, name: str) -> None:
        super().__init__(f"Model {name} is not loaded")


class ModelAlreadyLoaded(MainsailError):
    """A model of that name is already loaded (409)."""

    status_code = 409
    code = "ModelAlreadyLoaded"

    def __init__(self, name: str) -> None:
        super().__init__(f"Model {name} is already loaded")


class ModelLoading(MainsailError):
    """A model of that name is being loaded and cannot answer yet (429). On the wire its code is
    ``ModelNotReady``, as SageMaker's multi-model containers say."""

    status_code = 429
    code = "ModelNotReady"

    def __init__(self, name: str) -> None:
        super().__init__(f"Model {name} is still loading; wait and try the request again")


class InsufficientMemory(MainsailError):
    """The model does not fit in the memory budget even with every other model unloaded (507)."""

    status_code = 507
    code = "InsufficientMemory"


class PredictTimeout(MainsailError):
    """The handler did not answer within the configured timeout (504)."""

    status_code = 504
    code = "Timeout"

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"the model did not answer within {timeout_s:g} s")


class InvalidModelArchive(MainsailError):
    """A model or source archive is unsafe or malformed."""

    status_code = 400
    code = "InvalidModelArchive"


class HandlerError(MainsailError):
    """A user script breaks the inference toolkit's contract (detected at load)."""

    status_code = 500
    code = "HandlerError"
