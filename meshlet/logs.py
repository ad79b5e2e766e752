"""Logging set-up shared by every meshlet process: one line per event, to stderr.

``plain`` is for people (``2026-01-01T00:00:00Z INFO webhook injected pod=...``); ``json`` is one
object per line for log pipelines. Secrets never reach a logger: components log names and
fingerprints, not tokens or keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

__all__ = ["LogFormat", "configure_logging"]

LogFormat = Literal["plain", "json"]
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO}
_LEVELS |= {"warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "info", fmt: LogFormat = "plain") -> None:
    """Configure the root logger; ``level`` is one of trace/debug/info/warn/error."""
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%SZ"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
