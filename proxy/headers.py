"""Which HTTP/1.1 header fields a proxy forwards, per RFC 9110 section 7.6.1 (pure functions).

Hop-by-hop fields describe one connection, not the message: ``Connection`` and every field it
names, plus ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Transfer-Encoding`` and ``Upgrade``.
They are removed before forwarding. Two are then re-created on purpose:

- ``Transfer-Encoding: chunked`` when the received message was chunked, so the next hop frames
  the body the same way (h11 writes the chunks; the body is streamed, never buffered);
- ``Connection: upgrade`` with ``Upgrade`` for a protocol switch (WebSocket), which is a
  negotiation between the two ends that the proxy must pass on, then tunnel.

``Content-Length`` is end-to-end and kept (h11 enforces that the body matches it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["Forwarded", "forward_headers"]

_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade"}
)
_CHUNKED: Final = (b"transfer-encoding", b"chunked")


@dataclass(frozen=True, slots=True)
class Forwarded:
    """Headers to send to the next hop, and what the hop-by-hop ones asked for."""

    headers: list[tuple[bytes, bytes]]
    upgrade: bytes | None
    """The ``Upgrade`` value when ``Connection`` asks for an upgrade (e.g. ``websocket``)."""
    close: bool
    """``Connection: close`` was present: the sender will not reuse the connection."""


def forward_headers(
    headers: Iterable[tuple[bytes, bytes]], *, allow_upgrade: bool = True
) -> Forwarded:
    """Strip hop-by-hop fields from h11's (lower-cased) ``headers`` and re-create framing.

    ``allow_upgrade=False`` drops an upgrade request's negotiation (used where no switch can
    follow, e.g. a response that is not ``101``).
    """
    items = list(headers)
    connection_tokens: set[bytes] = set()
    chunked = False
    upgrade_value: bytes | None = None
    for name, value in items:
        if name == b"connection":
            connection_tokens.update(
                token.strip().lower() for token in value.split(b",") if token.strip()
            )
        elif name == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
        elif name == b"upgrade":
            upgrade_value = value
    dropped = _HOP_BY_HOP | connection_tokens
    kept = [(name, value) for name, value in items if name not in dropped]
    if chunked:
        kept.append(_CHUNKED)
    upgrade = upgrade_value if allow_upgrade and b"upgrade" in connection_tokens else None
    if upgrade is not None:
        kept.append((b"connection", b"upgrade"))
        kept.append((b"upgrade", upgrade))
    return Forwarded(kept, upgrade, b"close" in connection_tokens)
