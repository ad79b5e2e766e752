"""``DiscoverySettings``: how the proxy reaches the destination service.

Read from the ``MESHLET_PROXY_DESTINATION_*`` variables of docs/architecture.md (and the trust
anchors from ``MESHLET_PROXY_IDENTITY_TRUST_ANCHORS``); the timing fields are not configurable
through the environment yet and carry Linkerd's values where Linkerd has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from meshlet.names import DESTINATION_PORT, control_plane_identity

__all__ = ["DEFAULT_SVC_ADDR", "DiscoverySettings", "DiscoverySettingsError"]

DEFAULT_SVC_ADDR: Final = f"meshlet-destination.meshlet.svc.cluster.local:{DESTINATION_PORT}"


class DiscoverySettingsError(ValueError):
    """A variable that cannot be used; the message names it."""


def _split_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DiscoverySettingsError(
            f"MESHLET_PROXY_DESTINATION_SVC_ADDR: expected host:port, got {text!r}"
        )
    return host, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoverySettings:
    # The destination service: where to connect, and the identity its certificate must carry.
    host: str
    port: int = DESTINATION_PORT
    server_name: str
    # PEM trust anchors the server certificate must chain to (the mesh's roots).
    trust_anchors_pem: str
    # seconds to connect and finish the TLS handshake (Linkerd's control-plane connect budget).
    connect_timeout: float = 3.0
    # seconds ``endpoints()``/``profile()`` wait for a first answer before returning the view
    # unresolved (Linkerd: CONTROL_STREAM_INITIAL_TIMEOUT=3s).
    initial_timeout: float = 3.0
    # seconds without any line (the server sends keepalives every 10s) before the stream is
    # considered dead and reopened.
    idle_timeout: float = 30.0
    # Reconnect backoff: doubling from the first to the cap, with jitter (seconds).
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    # The longest line accepted from the server (a snapshot of a very large service).
    max_line_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> DiscoverySettings:
        host, port = _split_addr(
            environ.get("MESHLET_PROXY_DESTINATION_SVC_ADDR", "") or DEFAULT_SVC_ADDR
        )
        name = environ.get("MESHLET_PROXY_DESTINATION_SVC_NAME", "") or control_plane_identity(
            "destination"
        )
        anchors = environ.get("MESHLET_PROXY_IDENTITY_TRUST_ANCHORS", "")
        if "-----BEGIN CERTIFICATE-----" not in anchors:
            raise DiscoverySettingsError(
                "MESHLET_PROXY_IDENTITY_TRUST_ANCHORS: expected PEM certificates "
                "(the destination service is verified against them)"
            )
        return cls(host=host, port=port, server_name=name, trust_anchors_pem=anchors)
