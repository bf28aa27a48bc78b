"""Logging set-up, applied only by the CLI and by worker processes (libraries never configure it)."""

from __future__ import annotations

import logging.config


def configure_logging(level: str = "info", *, access_log: bool = True) -> None:
    level_name = level.upper()
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {
                "format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
            },
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
        },
        "root": {"handlers": ["stderr"], "level": level_name},
        "loggers": {
            "uvicorn.error": {"level": level_name},
            "uvicorn.access": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},  # one line per health check otherwise
            "mainsail.access": {"level": level_name if access_log else "WARNING"},
        },
    })
