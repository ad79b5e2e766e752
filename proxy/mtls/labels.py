"""What the request path adds for mTLS: the client-identity header and the TLS metric labels.

Pure functions over h11/h2 header lists (``(name, value)`` byte pairs).

- ``meshlet-client-id``: the inbound proxy tells the application who called it. A client could
  send the header itself, so every inbound request first loses any copy (whatever its case), and
  only a connection whose client proved an identity over mTLS gets it back, set by us.
- Metric labels, Linkerd's: a meshed connection is ``tls="true"`` with ``client_id`` (inbound)
  or ``server_id`` (outbound); any other is ``tls="no_identity"`` with a ``no_tls_reason``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CLIENT_ID_HEADER",
    "NoTlsReason",
    "TlsLabels",
    "inbound_request_headers",
    "strip_client_id",
]

CLIENT_ID_HEADER: Final = b"meshlet-client-id"


def strip_client_id(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without any ``meshlet-client-id`` field (compared case-insensitively)."""
    return [(name, value) for name, value in headers if name.lower() != CLIENT_ID_HEADER]


def inbound_request_headers(
    headers: Iterable[tuple[bytes, bytes]], client_id: str | None
) -> list[tuple[bytes, bytes]]:
    """The headers to forward to the application: a spoofed client id removed, the proven one
    (``client_id`` from the mTLS handshake, ``None`` for plaintext) added."""
    kept = strip_client_id(headers)
    if client_id is not None:
        kept.append((CLIENT_ID_HEADER, client_id.encode("ascii")))
    return kept


class NoTlsReason(enum.Enum):
    """Why a connection is not meshed; the value is the ``no_tls_reason`` label (Linkerd's)."""

    DISABLED = "disabled"
    """This proxy runs without identity."""
    NO_TLS_FROM_REMOTE = "no_tls_from_remote"
    """Inbound: the client spoke plaintext, or TLS addressed to the application (passed through)."""
    NOT_PROVIDED_BY_SERVICE_DISCOVERY = "not_provided_by_service_discovery"
    """Outbound: discovery did not say the endpoint is meshed (no identity to expect)."""
    LOOPBACK = "loopback"
    """Traffic to this pod's own loopback (never leaves the pod)."""
    NO_LOCAL_IDENTITY = "no_local_identity"
    """This proxy has no certificate yet."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True, slots=True)
class TlsLabels:
    """The TLS part of a metric series; ``text`` is what goes between the braces."""

    text: str

    @classmethod
    def inbound_meshed(cls, client_id: str) -> TlsLabels:
        return cls(f'tls="true",client_id="{_escape(client_id)}"')

    @classmethod
    def outbound_meshed(cls, server_id: str) -> TlsLabels:
        return cls(f'tls="true",server_id="{_escape(server_id)}"')

    @classmethod
    def plaintext(cls, reason: NoTlsReason) -> TlsLabels:
        return cls(f'tls="no_identity",no_tls_reason="{reason.value}"')
