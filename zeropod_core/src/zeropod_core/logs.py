"""Structured logging: one JSON object per line, with the ``extra=`` fields as keys.

containerd reads a shim's log FIFO line by line, and people grep and ``jq`` the manager's
output, so every process of zeropod logs the same shape. Context that applies to every line of
a process (the container id in a shim) is set once with :func:`set_context`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_context: dict[str, Any] = {}


def set_context(**fields: Any) -> None:
    """Add fields that every following log line of this process carries (e.g. ``id``)."""
    _context.update(fields)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, msg, context and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_context)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(stream: TextIO | None = None, level: int | str = logging.INFO) -> None:
    """Send the ``zeropod`` loggers to ``stream`` (default stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("zeropod")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
