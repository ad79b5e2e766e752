"""The client's sans-IO half: split NDJSON, and fold update lines into the current view.

No sockets and no Trio here: bytes in, immutable snapshots out, so every rule (add replaces,
remove forgets, a snapshot starts over, garbage is the server's fault) is tested directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "Endpoint",
    "EndpointSet",
    "EndpointTracker",
    "LineSplitter",
    "ProfileTracker",
    "ServerProtocolError",
]


class ServerProtocolError(Exception):
    """The destination service sent something that breaks the wire format (its fault)."""


class LineSplitter:
    """Cut a byte stream into complete lines, refusing any line longer than ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        *complete, rest = self._buffer.split(b"\n")
        if len(rest) > self.max_bytes:
            raise ServerProtocolError(f"a line is longer than {self.max_bytes} bytes")
        self._buffer = bytearray(rest)
        return [bytes(line) for line in complete if line.strip()]


def parse_line(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as error:
        raise ServerProtocolError(f"not JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ServerProtocolError("a line is not an object with a 'type'")
    return message


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    weight: int
    identity: str | None
    protocol_hint: str | None
    labels: Mapping[str, str]
    opaque_transport_port: int | None = None


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """What the proxy balances over.

    ``resolved`` is False until a first snapshot arrived; ``connected`` says whether the stream
    is up right now (when it is not, the endpoints are the last known ones and still served);
    ``error`` is why the last attempt failed, or why the destination refused the authority.
    """

    resolved: bool = False
    exists: bool = False
    endpoints: Mapping[tuple[str, int], Endpoint] = field(
        default_factory=lambda: MappingProxyType({})
    )
    connected: bool = False
    error: str | None = None
    version: int = 0


def _endpoint(raw: Any) -> Endpoint:
    try:
        address, port, weight = raw["address"], raw["port"], raw.get("weight", 10000)
        labels = raw.get("labels") or {}
        identity, hint = raw.get("identity"), raw.get("protocol_hint")
        opaque = raw.get("opaque_transport_port")
    except (TypeError, KeyError, AttributeError):
        raise ServerProtocolError(f"malformed endpoint {str(raw)[:200]}") from None
    valid = (
        isinstance(address, str)
        and isinstance(port, int)
        and 0 < port < 65536
        and isinstance(weight, int)
        and (identity is None or isinstance(identity, str))
        and (hint is None or isinstance(hint, str))
        and isinstance(labels, dict)
        and (opaque is None or isinstance(opaque, int))
    )
    if not valid:
        raise ServerProtocolError(f"malformed endpoint {str(raw)[:200]}")
    return Endpoint(address, port, weight, identity, hint, MappingProxyType(dict(labels)), opaque)


def _endpoint_list(message: dict[str, Any]) -> list[Any]:
    items = message.get("endpoints")
    if not isinstance(items, list):
        raise ServerProtocolError(f"a {message['type']} line without an endpoints list")
    return items


class EndpointTracker:
    """Folds ``/v1/endpoints`` lines into successive :class:`EndpointSet` values."""

    def __init__(self) -> None:
        self.current = EndpointSet()

    def _publish(self, **changes: Any) -> EndpointSet:
        self.current = replace(self.current, version=self.current.version + 1, **changes)
        return self.current

    def apply(self, message: dict[str, Any]) -> bool:
        """Apply one line; return whether the endpoint set changed (keepalives do not)."""
        kind = message["type"]
        if kind in {"keepalive", "close"}:
            return False
        endpoints = dict(self.current.endpoints)
        if kind == "snapshot":
            exists = message.get("exists")
            if not isinstance(exists, bool):
                raise ServerProtocolError("a snapshot without 'exists'")
            fresh = {(e.address, e.port): e for e in map(_endpoint, _endpoint_list(message))}
            self._publish(
                resolved=True, exists=exists, endpoints=MappingProxyType(fresh), error=None
            )
            return True
        if not self.current.resolved:
            raise ServerProtocolError(f"a {kind} line before the snapshot")
        if kind == "add":
            for endpoint in map(_endpoint, _endpoint_list(message)):
                endpoints[(endpoint.address, endpoint.port)] = endpoint
        elif kind == "remove":
            for raw in _endpoint_list(message):
                if not isinstance(raw, dict):
                    raise ServerProtocolError("a remove entry is not an object")
                endpoints.pop((raw.get("address"), raw.get("port")), None)  # type: ignore[arg-type]
        else:
            return False  # a newer server's line type: ignore, as the format allows
        self._publish(endpoints=MappingProxyType(endpoints))
        return True

    def set_connection(self, *, connected: bool, error: str | None = None) -> bool:
        if self.current.connected == connected and self.current.error == error:
            return False
        self._publish(connected=connected, error=error)
        return True


@dataclass(frozen=True, slots=True)
class ProfileState:
    resolved: bool = False
    profile: Mapping[str, Any] | None = None  # the last ``profile`` line (minus "type")
    connected: bool = False
    error: str | None = None
    version: int = 0


class ProfileTracker:
    """Folds ``/v1/profiles`` lines: each ``profile`` line replaces the previous one."""

    def __init__(self) -> None:
        self.current = ProfileState()

    def apply(self, message: dict[str, Any]) -> bool:
        if message["type"] != "profile":
            return False
        if not isinstance(message.get("routes"), list):
            raise ServerProtocolError("a profile line without a routes list")
        body = MappingProxyType({k: v for k, v in message.items() if k != "type"})
        self.current = replace(
            self.current, resolved=True, profile=body, error=None, version=self.current.version + 1
        )
        return True

    def set_connection(self, *, connected: bool, error: str | None = None) -> bool:
        if self.current.connected == connected and self.current.error == error:
            return False
        self.current = replace(
            self.current, connected=connected, error=error, version=self.current.version + 1
        )
        return True
