"""What an object source yields, and the one interface every source implements.

Theory of operation: a source (the Kubernetes API, or the local YAML file) produces, per kind,
a ``Relisted`` with every object it knows (at start, after a 410 Gone, after the file changed),
then ``Changed`` events as objects are added, modified and deleted. Objects are the raw
dictionaries of the API; parsing and validation happen in the pure core (``index.py``), so every
source gets the same treatment of bad objects. ``SourceError`` reports trouble (an API error, a
file that does not parse) for logs and metrics; the source itself keeps going.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from .model import Kind

__all__ = ["KINDS", "Changed", "ObjectSource", "Relisted", "SourceError", "SourceEvent"]

KINDS: Final[tuple[Kind, ...]] = ("Service", "EndpointSlice", "Pod", "ServiceProfile")


@dataclass(frozen=True, slots=True)
class Relisted:
    """The complete current set of ``kind`` (replaces whatever was known before)."""

    kind: Kind
    objects: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Changed:
    kind: Kind
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    object: Any


@dataclass(frozen=True, slots=True)
class SourceError:
    """Trouble reading ``kind``: ``reason`` is a slug for the metric, ``detail`` for the log."""

    kind: Kind | Literal["all"]
    reason: str
    detail: str


SourceEvent = Relisted | Changed | SourceError


class ObjectSource(Protocol):
    """Yields events forever (until cancelled); handles its own retries and backoff."""

    def events(self) -> AsyncIterator[SourceEvent]: ...
