"""Who may tap, and what a tap request asks for: the pure part of the tap server (no I/O).

``decide`` turns a request (method, target) and who sent it (on loopback or not; the mesh
identity it proved over mTLS, if any) into a ``TapQuery`` or a ``TapRefusal`` with its status.
An mTLS client is judged by its identity alone (``authorized``, from
``MESHLET_PROXY_TAP_AUTHORIZED_IDENTITIES``); any other client by its address (loopback only).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from proxy.settings import PREFIX
from proxy.tap import DEFAULT_MAX_RPS, MAX_RPS_LIMIT, TapFilter

__all__ = [
    "TapQuery",
    "TapRefusal",
    "decide",
    "is_loopback",
    "parse_identities",
    "parse_tap_query",
]

_MAX_VALUE: Final = 1024  # longest filter value
_PARAMETERS: Final = frozenset({"direction", "authority", "path", "method", "status", "max_rps"})
_DIRECTIONS: Final = frozenset({"inbound", "outbound"})
_STATUS_CLASSES: Final = {f"{n}xx": n for n in range(1, 6)}
_IDENTITY: Final = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_NOT_AUTHORIZED: Final = (
    "tap is only served to clients on loopback or with an authorized mesh identity (mTLS)"
)


def parse_identities(text: str) -> frozenset[str]:
    """``"a.ns.serviceaccount.identity.meshlet.cluster.local, ..."`` → the set (DNS names)."""
    identities: set[str] = set()
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if len(item) > 253 or not _IDENTITY.match(item):
            raise ValueError(f"{raw.strip()!r} is not a mesh identity (a DNS name)")
        identities.add(item)
    return frozenset(identities)


@dataclass(frozen=True, slots=True)
class TapQuery:
    filter: TapFilter
    max_rps: float


@dataclass(frozen=True, slots=True)
class TapRefusal:
    status: int
    message: str


class _QueryError(ValueError):
    pass


def parse_tap_query(query: str) -> TapQuery:
    """``direction=inbound&path=/api`` → the filter and rate; ``ValueError`` says what is wrong."""
    try:
        pairs = parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=bool(query),
            max_num_fields=len(_PARAMETERS),
        )
    except ValueError as exc:
        raise _QueryError(f"malformed query string: {exc}") from None
    values: dict[str, str] = {}
    for key, value in pairs:
        if key not in _PARAMETERS:
            raise _QueryError(f"unknown parameter {key!r}; known: {', '.join(sorted(_PARAMETERS))}")
        if key in values:
            raise _QueryError(f"parameter {key!r} given twice")
        if not value or len(value) > _MAX_VALUE:
            raise _QueryError(f"parameter {key!r} must have 1 to {_MAX_VALUE} characters")
        values[key] = value
    direction = values.get("direction")
    if direction is not None and direction not in _DIRECTIONS:
        raise _QueryError("direction must be inbound or outbound")
    path = values.get("path")
    if path is not None and not path.startswith("/"):
        raise _QueryError("path must start with /")
    method = values.get("method")
    if method is not None and not (method.isascii() and method.isalpha()):
        raise _QueryError("method must be letters, such as GET")
    status = values.get("status")
    if status is not None and status.lower() not in _STATUS_CLASSES:
        raise _QueryError("status must be a class: 1xx, 2xx, 3xx, 4xx or 5xx")
    authority = values.get("authority")
    tap_filter = TapFilter(
        direction=direction,
        authority=authority.lower().encode() if authority is not None else None,
        path_prefix=path.encode() if path is not None else None,
        method=method.upper().encode() if method is not None else None,
        status_class=_STATUS_CLASSES[status.lower()] if status is not None else None,
    )
    return TapQuery(tap_filter, _max_rps(values.get("max_rps")))


def _max_rps(text: str | None) -> float:
    if text is None:
        return DEFAULT_MAX_RPS
    try:
        rate = float(text)
    except ValueError:
        raise _QueryError(f"max_rps {text!r} is not a number") from None
    if not 0 < rate <= MAX_RPS_LIMIT:  # also rejects nan
        raise _QueryError(f"max_rps must be more than 0 and at most {MAX_RPS_LIMIT:g}")
    return rate


def decide(
    method: bytes,
    target: bytes,
    *,
    peer_loopback: bool,
    client_id: str | None = None,
    authorized: frozenset[str] = frozenset(),
) -> TapQuery | TapRefusal:
    """What the tap server does with ``method target`` from a peer: ``client_id`` is the
    identity it proved over mTLS (``None``: plaintext or TLS without a client certificate)."""
    path, _, query = target.partition(b"?")
    refusal = _authorize(peer_loopback, client_id, authorized)
    if refusal is not None:
        return refusal
    if path != b"/tap":
        return TapRefusal(404, "not found; the tap is GET /tap")
    if method != b"GET":
        return TapRefusal(405, "method not allowed; use GET")
    try:
        return parse_tap_query(query.decode("ascii"))
    except UnicodeDecodeError:
        return TapRefusal(400, "the query string must be ASCII (percent-encoded)")
    except ValueError as exc:
        return TapRefusal(400, str(exc))


def _authorize(
    peer_loopback: bool, client_id: str | None, authorized: frozenset[str]
) -> TapRefusal | None:
    """An mTLS client is judged by its identity alone; any other client by its address."""
    if client_id is not None:
        if client_id in authorized:
            return None
        return TapRefusal(
            403,
            f"{client_id} is not authorized to tap this proxy ({PREFIX}TAP_AUTHORIZED_IDENTITIES)",
        )
    return None if peer_loopback else TapRefusal(403, _NOT_AUTHORIZED)


def is_loopback(address: object) -> bool:
    try:
        host = address[0] if isinstance(address, tuple) else str(address)
        ip = ipaddress.ip_address(host)
    except (ValueError, IndexError):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
