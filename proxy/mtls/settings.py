"""mTLS timeouts: one frozen object derived from ``ProxySettings`` plus one variable of its own.

``MESHLET_PROXY_IDENTITY_WAIT_TIMEOUT`` is read from ``ProxySettings.extra`` (the proxy keeps
every ``MESHLET_PROXY_IDENTITY_*`` variable there for the identity side), so no shared settings
module changes for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlet.durations import DurationError, parse_duration
from proxy.settings import PREFIX, ProxySettings, SettingsError

__all__ = ["MtlsSettings"]

_WAIT_SUFFIX = "IDENTITY_WAIT_TIMEOUT"


@dataclass(frozen=True, slots=True, kw_only=True)
class MtlsSettings:
    connect_timeout: float = 1.0
    """Seconds for the TCP connect to a meshed peer: the outbound connect timeout (1 s)."""

    handshake_timeout: float = 10.0
    """Seconds for a TLS handshake, either side: the protocol detection timeout (Linkerd's 10 s),
    since reading a ClientHello is detection too; a handshake on a healthy peer takes ms."""

    identity_wait: float = 0.0
    """Seconds an outbound meshed connect waits for this proxy's first certificate before failing
    with ``no_local_identity``. 0 (the default) fails fast: the proxy is not ready before its
    certificate, so Kubernetes sends it no traffic, and an application that connects out during
    start-up gets a quick 503 it can retry rather than a hang."""

    @classmethod
    def from_proxy_settings(cls, settings: ProxySettings) -> MtlsSettings:
        wait = 0.0
        text = settings.extra.get(_WAIT_SUFFIX)
        if text:
            try:
                wait = parse_duration(text)
            except DurationError as exc:
                raise SettingsError(f"{PREFIX}{_WAIT_SUFFIX}: {exc}") from None
        return cls(
            connect_timeout=settings.outbound_connect_timeout,
            handshake_timeout=settings.detect_timeout,
            identity_wait=wait,
        )
