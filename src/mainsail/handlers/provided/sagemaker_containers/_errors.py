"""The errors of ``sagemaker_containers`` that inference scripts raise or catch. mainsail answers
``UnsupportedFormatError`` with 415 (whoever raises it) and ``ClientError`` with 500."""

from __future__ import annotations

import textwrap
from typing import Any


class ClientError(Exception):
    """Error class used to separate framework and user errors."""


class UnsupportedFormatError(Exception):
    """A content type the framework cannot read or write."""

    def __init__(self, content_type: str, **kwargs: Any) -> None:
        self.message = textwrap.dedent(
            f"""Content type {content_type} is not supported by this framework.

            Please implement input_fn to to deserialize the request data or an output_fn to
            serialize the response. For more information, see the SageMaker Python SDK README."""
        )
        super().__init__(self.message, **kwargs)
