"""Names, ports and defaults that several components must agree on.

This module is the single source for the contract in docs/architecture.md: if a value here
changes, the webhook's patch, the proxy's settings and the manifests change with it.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ANNOTATION_DOMAIN",
    "CONFIG_ANNOTATION_PREFIX",
    "DEFAULT_CLUSTER_NETWORKS",
    "DEFAULT_CONTROL_PLANE_NS",
    "DEFAULT_INBOUND_POLICY",
    "DEFAULT_OPAQUE_PORTS",
    "DEFAULT_TRUST_DOMAIN",
    "DESTINATION_PORT",
    "IDENTITY_PORT",
    "IDENTITY_TOKEN_AUDIENCE",
    "INBOUND_POLICIES",
    "INJECT_ANNOTATION",
    "INJECT_LABEL",
    "PROXY_ADMIN_PORT",
    "PROXY_CONTAINER_NAME",
    "PROXY_INBOUND_PORT",
    "PROXY_INIT_CONTAINER_NAME",
    "PROXY_OUTBOUND_PORT",
    "PROXY_TAP_PORT",
    "PROXY_UID",
    "WEBHOOK_PORT",
    "control_plane_identity",
    "workload_identity",
]

ANNOTATION_DOMAIN: Final = "meshlet.io"
INJECT_LABEL: Final = "meshlet.io/inject"
INJECT_ANNOTATION: Final = "meshlet.io/inject"
CONFIG_ANNOTATION_PREFIX: Final = "config.meshlet.io/"

DEFAULT_CONTROL_PLANE_NS: Final = "meshlet"
DEFAULT_TRUST_DOMAIN: Final = "cluster.local"
IDENTITY_TOKEN_AUDIENCE: Final = "identity.meshlet.io"  # noqa: S105 (an audience, not a secret)

# Control-plane ports (Linkerd's numbers, so operators' muscle memory carries over).
IDENTITY_PORT: Final = 8080
DESTINATION_PORT: Final = 8086
WEBHOOK_PORT: Final = 8443

# The proxy's ports and user.
PROXY_INBOUND_PORT: Final = 4143
PROXY_OUTBOUND_PORT: Final = 4140
PROXY_ADMIN_PORT: Final = 4191
PROXY_TAP_PORT: Final = 4190
PROXY_UID: Final = 2102

PROXY_CONTAINER_NAME: Final = "meshlet-proxy"
PROXY_INIT_CONTAINER_NAME: Final = "meshlet-init"

# Server-speaks-first protocols whose ports skip protocol detection (Linkerd's default list).
DEFAULT_OPAQUE_PORTS: Final = (25, 587, 3306, 4444, 5432, 6379, 9300, 11211)

# The proxy's default inbound policy (Linkerd's config.linkerd.io/default-inbound-policy values,
# without ``audit``) and the networks the ``cluster-*`` policies accept (Linkerd's default).
INBOUND_POLICIES: Final = (
    "all-unauthenticated",
    "all-authenticated",
    "cluster-unauthenticated",
    "cluster-authenticated",
    "deny",
)
DEFAULT_INBOUND_POLICY: Final = "all-unauthenticated"
DEFAULT_CLUSTER_NETWORKS: Final = (
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd00::/8",
)


def workload_identity(
    serviceaccount: str,
    namespace: str,
    *,
    control_plane_ns: str = DEFAULT_CONTROL_PLANE_NS,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> str:
    """The TLS identity (single DNS SAN) of pods running as ``serviceaccount`` in ``namespace``."""
    return f"{serviceaccount}.{namespace}.serviceaccount.identity.{control_plane_ns}.{trust_domain}"


def control_plane_identity(
    component: str,
    *,
    control_plane_ns: str = DEFAULT_CONTROL_PLANE_NS,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> str:
    """The identity of a control-plane component (``identity``, ``destination``, ``webhook``)."""
    return workload_identity(
        f"meshlet-{component}",
        control_plane_ns,
        control_plane_ns=control_plane_ns,
        trust_domain=trust_domain,
    )
