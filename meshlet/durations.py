"""Durations as operators write them: ``100ms``, ``10s``, ``5m``, ``1h``, ``1h30m``.

The same grammar is used by the proxy's ``MESHLET_PROXY_*_TIMEOUT`` variables, the injector's
``config.meshlet.io/*-timeout`` annotations and ServiceProfile route timeouts, so a value that
one component accepts is accepted by all.
"""

from __future__ import annotations

import re

__all__ = ["DurationError", "format_duration", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_MAX_LENGTH = 32


class DurationError(ValueError):
    """A duration string that does not follow the grammar; the message names the value."""


def parse_duration(text: str) -> float:
    """Return the duration in seconds.

    >>> parse_duration("1m30s")
    90.0
    """
    value = text.strip()
    if not value or len(value) > _MAX_LENGTH:
        raise DurationError(f"invalid duration {text!r}: expected e.g. 100ms, 10s, 5m, 1h30m")
    total = 0.0
    position = 0
    for match in _PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(value):
        raise DurationError(f"invalid duration {text!r}: expected e.g. 100ms, 10s, 5m, 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact form in the grammar above for a whole number of milliseconds."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"
