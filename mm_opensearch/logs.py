"""Logging for the CLI, the API server and the workers: plain lines for people, JSON lines for machines.

``MMOS_LOG_FORMAT=json`` writes one JSON object per record (``ts``, ``level``, ``logger``,
``message``, any ``extra={...}`` fields, ``exc`` for a traceback), which log shippers index without
parsing rules. Our loggers (and Celery's and uvicorn's, whose INFO lines say what a service is
doing) run at ``MMOS_LOG_LEVEL``; the others (opensearch-py logs every request at INFO) at WARNING.

A CLI command (``console=True``) is for a person: its output is what it prints. There our loggers
speak from WARNING up, and opensearch-py's only from ERROR (it logs every failed request at WARNING,
a 404 of a probe as loudly as a 500; the command reports a real failure itself, in one line).
``MMOS_LOG_LEVEL=DEBUG`` brings everything back.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["LogFormat", "JsonFormatter", "configure_logging", "logging_config"]

LogFormat = Literal["text", "json"]
SERVICE_LOGGERS = ("mm_opensearch", "mm_opensearch_workers", "celery", "uvicorn")
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({key: value for key, value in vars(record).items() if key not in _RECORD_FIELDS})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def logging_config(log_format: LogFormat = "text", level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: one stderr handler, our services' loggers at ``level``.

    uvicorn takes it as ``log_config`` and applies it in each of its worker processes.
    """
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "default"}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {name: {"level": level.upper(), "handlers": [], "propagate": True} for name in SERVICE_LOGGERS},
    }


def configure_logging(log_format: LogFormat = "text", level: str = "INFO", *, console: bool = False) -> None:
    """Apply :func:`logging_config` to this process (CLI commands, Celery workers)."""
    logging.config.dictConfig(logging_config(log_format, level))
    if console and level.upper() != "DEBUG":
        for name in ("mm_opensearch", "workers"):
            logger = logging.getLogger(name)
            logger.setLevel(max(logger.level, logging.WARNING))
        logging.getLogger("opensearch").setLevel(logging.ERROR)
