"""Logging set-up, applied only by the CLI and by worker processes (libraries never configure it)."""

from __future__ import annotations

import logging
import logging.config

LINE_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class LineFormatter(logging.Formatter):
    """mainsail's log line. The access log (``mainsail.serve.access_log``) writes the same lines
    itself, in batches, when this formatter with its default format is the one it reaches."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%",
                 validate: bool = True) -> None:
        super().__init__(fmt or LINE_FORMAT, datefmt, style, validate)  # type: ignore[arg-type]
        self.is_default = (fmt in (None, LINE_FORMAT) and datefmt is None and style == "%")


class QuietErrors(logging.Filter):
    """Drops a record whose exception says it was logged already (``quiet_in_logs``): uvicorn's
    "Exception in ASGI application" traceback for a stream the server aborted on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, "quiet_in_logs", False)


def configure_logging(level: str = "info", *, access_log: bool = True) -> None:
    level_name = level.upper()
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"()": LineFormatter},
        },
        "filters": {"quiet": {"()": QuietErrors}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
        },
        "root": {"handlers": ["stderr"], "level": level_name},
        "loggers": {
            "uvicorn.error": {"level": level_name, "filters": ["quiet"]},
            "uvicorn.access": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},  # one line per health check otherwise
            "mainsail.access": {"level": level_name if access_log else "WARNING"},
        },
    })
