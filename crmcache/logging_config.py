"""One logging configuration for every crmcache process: plain text, or JSON lines.

Lines about an event carry its tenant and event ids: pass them as ``extra=`` on one call, or
bind them for a block with ``log_context(tenant=..., event_ids=...)`` (the Celery worker binds
each task's tenant, event ids and task id this way). Text lines show them as a trailing
``[tenant=... event_ids=...]``; JSON lines as fields.
"""

from __future__ import annotations

import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("tenant", "event_id", "event_ids", "task_id")
"""Record attributes that identify what a line is about, in the order text lines show them."""

_context: ContextVar[dict[str, str] | None] = ContextVar("crmcache_log_context", default=None)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add `fields` (e.g. tenant, event_ids) to every log record emitted inside the block."""
    token = _context.set({**(_context.get() or {}), **{k: str(v) for k, v in fields.items()}})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: object) -> None:
    """Replace the bound fields for the rest of this context (a Celery task's prerun)."""
    _context.set({k: str(v) for k, v in fields.items()})


class ContextFilter(logging.Filter):
    """Copy the bound fields onto each record that does not already carry them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """The text format, plus ``[tenant=... event_ids=...]`` when a line is about an event."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        context = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) not in (None, "")
        )
        return f"{line} [{context}]" if context else line


def logging_dict(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """The dictConfig for `level` and `fmt` ("text" or "json")."""
    formatter: dict[str, Any] = {"()": f"{__name__}.TextFormatter", "format": TEXT_FORMAT}
    if fmt == "json":
        # Extra record attributes (tenant, event_ids, ...) become JSON fields by themselves.
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"context": {"()": f"{__name__}.ContextFilter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"urllib3": {"level": "WARNING"}},
    }


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    logging.config.dictConfig(logging_dict(level, fmt))
