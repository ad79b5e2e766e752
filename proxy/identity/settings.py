"""The proxy's identity client settings: one frozen object from ``MESHLET_PROXY_IDENTITY_*``.

The variables are the rows of docs/architecture.md; the tunables below them (timeouts, backoff,
refresh clamps) have Linkerd's values and are not meant to be set by operators.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshlet.names import IDENTITY_PORT, control_plane_identity

__all__ = ["IdentityClientSettings", "IdentitySettingsError"]

_PREFIX = "MESHLET_PROXY_IDENTITY_"
DEFAULT_SVC_ADDR = f"meshlet-identity.meshlet.svc.cluster.local:{IDENTITY_PORT}"


class IdentitySettingsError(ValueError):
    """A missing or bad ``MESHLET_PROXY_IDENTITY_*`` variable; the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityClientSettings:
    # A memory-backed scratch directory (emptyDir medium: Memory) for the key and certificate,
    # which Python's ssl module can only load from files.
    identity_dir: Path = Path("/var/run/meshlet/identity/end-entity")
    # The projected ServiceAccount token; read fresh for every request because kubelet rotates it.
    token_file: Path = Path("/var/run/secrets/tokens/meshlet-identity-token")
    # PEM text of the trust anchors every peer (and the identity service) is verified against.
    trust_anchors_pem: str
    # This workload's identity: the single DNS SAN of its certificate.
    local_name: str
    svc_host: str = "meshlet-identity.meshlet.svc.cluster.local"
    svc_port: int = IDENTITY_PORT
    # The identity service's own identity, checked against its serving certificate.
    svc_name: str = control_plane_identity("identity")
    # Seconds for one certify exchange (connect, TLS, request, answer).
    request_timeout: float = 10.0
    # Seconds between failed attempts: doubling from min to max, with jitter.
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    # Renew at 70% of the remaining lifetime, clamped (Linkerd's IDENTITY_MIN/MAX_REFRESH).
    refresh_fraction: float = 0.7
    min_refresh: float = 10.0
    max_refresh: float = 24 * 3600.0
    # Bytes: an answer is two PEM certificates and a timestamp.
    max_response_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if not _count_certificates(self.trust_anchors_pem):
            raise IdentitySettingsError(f"{_PREFIX}TRUST_ANCHORS holds no PEM certificate")
        if not self.local_name:
            raise IdentitySettingsError(f"{_PREFIX}LOCAL_NAME is required")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> IdentityClientSettings:
        def get(suffix: str) -> str | None:
            value = environ.get(_PREFIX + suffix)
            return value if value else None

        values: dict[str, object] = {
            "trust_anchors_pem": get("TRUST_ANCHORS") or "",
            "local_name": get("LOCAL_NAME") or "",
        }
        if (directory := get("DIR")) is not None:
            values["identity_dir"] = Path(directory)
        if (token := get("TOKEN_FILE")) is not None:
            values["token_file"] = _existing_token_file(token)
        if (name := get("SVC_NAME")) is not None:
            values["svc_name"] = name
        addr = get("SVC_ADDR") or DEFAULT_SVC_ADDR
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise IdentitySettingsError(f"{_PREFIX}SVC_ADDR={addr!r}: expected host:port")
        values["svc_host"], values["svc_port"] = host.strip("[]"), int(port)
        return cls(**values)  # type: ignore[arg-type]


def _existing_token_file(value: str) -> Path:
    """The token file named by ``TOKEN_FILE``, which must exist at start-up.

    Kubernetes mounts a pod's volumes, the projected ServiceAccount token among them, before any
    of its containers starts, so a file missing at start-up is a wrong path or a missing volume:
    it would never appear, and the proxy would stay unready retrying. (Only an explicit variable
    is checked; the webhook always sets it. The file is read afresh for every request since
    kubelet rotates it.)
    """
    path = Path(value)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise IdentitySettingsError(
            f"{_PREFIX}TOKEN_FILE={value}: {problem} (the projected ServiceAccount token volume)"
        )
    return path


def _count_certificates(pem: str) -> int:
    """How many certificates OpenSSL reads from ``pem`` (the ``ssl`` module, not
    ``cryptography``: the proxy process never imports it, docs/performance.md "proxy memory")."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError):
        return 0
    return int(context.cert_store_stats()["x509"])
