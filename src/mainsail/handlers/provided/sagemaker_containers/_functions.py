"""``sagemaker_containers`` ``functions`` (provided by mainsail): ``error_wrapper``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def error_wrapper(fn: Callable[..., Any], error_class: type[Exception]) -> Callable[..., Any]:
    """``fn`` with any exception it raises turned into ``error_class`` (the cause kept)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise error_class(exc) from exc

    return wrapper
