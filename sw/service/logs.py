"""Structured logs: one JSON object per line on stderr.

Each line has ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``pid``, ``msg`` and the fields
the call passed in ``extra`` (``event``, ``route``, ``status``, ``device``, ``session``,
``outcome``...).  Admin calls, refusals and lifecycle events are logged at INFO; every
attestation at DEBUG (at thousands per second, a line each is a cost to choose).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

__all__ = ["JsonFormatter", "configure", "log_config"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def log_config(level: str = "INFO") -> dict[str, Any]:
    """A logging.config dict: everything (uvicorn's own loggers too) as JSON on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": handler},
        "loggers": {
            "mchsm": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def configure(level: str = "INFO") -> None:
    import logging.config

    logging.config.dictConfig(log_config(level))
