"""Inbound authorization: may this client reach the application? (sans-IO)

Linkerd's default inbound policy (``config.linkerd.io/default-inbound-policy``), decided once
per inbound connection from what the proxy knows when the connection is accepted: the client's
mesh identity (proven over mTLS, ``None`` for plaintext) and the client's address. There are no
per-port Server/AuthorizationPolicy resources here: the default is the whole policy.

``decide`` is the truth table, row by row (``mTLS`` = the client proved a mesh identity; the
cluster networks are ``MESHLET_PROXY_CLUSTER_NETWORKS``, Linkerd's private ranges by default)::

    policy                    mTLS, in   mTLS, out   plaintext, in   plaintext, out
    all-unauthenticated       allow      allow       allow           allow
    all-authenticated         allow      allow       unauthenticated unauthenticated
    cluster-unauthenticated   allow      outside     allow           outside
    cluster-authenticated     allow      outside     unauthenticated outside
    deny                      denied     denied      denied          denied

(``outside`` = ``outside_cluster_networks``; ``cluster-authenticated`` checks the network first,
so an outside plaintext client is ``outside_cluster_networks``.)

``PolicyMetrics`` counts refusals as Linkerd's ``inbound_http_authz_deny_total`` (per HTTP
request answered 403) and ``inbound_tcp_authz_deny_total`` (per opaque connection closed).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from meshlet import names

__all__ = [
    "DEFAULT_CLUSTER_NETWORKS",
    "MAX_DENY_SERIES",
    "REASON_TEXT",
    "AuthzReason",
    "DefaultInboundPolicy",
    "InboundPolicy",
    "Network",
    "PolicyMetrics",
    "Verdict",
    "decide",
    "parse_cluster_networks",
    "parse_policy",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_DENY_SERIES: Final = 1000


class DefaultInboundPolicy(enum.Enum):
    """``MESHLET_PROXY_DEFAULT_INBOUND_POLICY`` values (``meshlet.names.INBOUND_POLICIES``)."""

    ALL_UNAUTHENTICATED = "all-unauthenticated"
    ALL_AUTHENTICATED = "all-authenticated"
    CLUSTER_UNAUTHENTICATED = "cluster-unauthenticated"
    CLUSTER_AUTHENTICATED = "cluster-authenticated"
    DENY = "deny"


assert tuple(p.value for p in DefaultInboundPolicy) == names.INBOUND_POLICIES


class AuthzReason(enum.Enum):
    """Why a connection was allowed or refused; the value is the ``reason`` metric label."""

    UNAUTHENTICATED_ALLOWED = "unauthenticated_allowed"
    AUTHENTICATED = "authenticated"
    UNAUTHENTICATED = "unauthenticated"
    OUTSIDE_CLUSTER_NETWORKS = "outside_cluster_networks"
    DENIED = "denied"


REASON_TEXT: Final = {
    AuthzReason.UNAUTHENTICATED_ALLOWED: "the policy allows clients without a mesh identity",
    AuthzReason.AUTHENTICATED: "the client proved a mesh identity over mTLS",
    AuthzReason.UNAUTHENTICATED: "the policy requires a mesh identity (mTLS) and the client "
    "has none",
    AuthzReason.OUTSIDE_CLUSTER_NETWORKS: "the client's address is outside the cluster networks",
    AuthzReason.DENIED: "the policy denies every client",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: AuthzReason

    @property
    def text(self) -> str:
        return REASON_TEXT[self.reason]


DEFAULT_CLUSTER_NETWORKS: Final[tuple[Network, ...]] = tuple(
    ipaddress.ip_network(text) for text in names.DEFAULT_CLUSTER_NETWORKS
)


def parse_policy(text: str) -> DefaultInboundPolicy:
    """``all-authenticated`` -> the policy; ``ValueError`` lists the accepted values."""
    try:
        return DefaultInboundPolicy(text.strip().lower())
    except ValueError:
        raise ValueError(f"{text!r} is not one of {', '.join(names.INBOUND_POLICIES)}") from None


def parse_cluster_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, fd00::/8"`` -> networks; an empty list is refused (it would make every
    ``cluster-*`` policy refuse everyone, surely not what was meant)."""
    networks: list[Network] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network such as 10.0.0.0/8") from None
    if not networks:
        raise ValueError("no network given")
    return tuple(networks)


def _in_networks(client_ip: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


_AUTHENTICATED: Final = frozenset(
    {DefaultInboundPolicy.ALL_AUTHENTICATED, DefaultInboundPolicy.CLUSTER_AUTHENTICATED}
)
_CLUSTER: Final = frozenset(
    {DefaultInboundPolicy.CLUSTER_UNAUTHENTICATED, DefaultInboundPolicy.CLUSTER_AUTHENTICATED}
)


def decide(
    policy: DefaultInboundPolicy,
    *,
    client_id: str | None,
    client_ip: str,
    cluster_networks: Iterable[Network] = DEFAULT_CLUSTER_NETWORKS,
) -> Verdict:
    """The verdict for one inbound connection (the truth table in the module docstring)."""
    if policy is DefaultInboundPolicy.DENY:
        return Verdict(False, AuthzReason.DENIED)
    if policy in _CLUSTER and not _in_networks(client_ip, cluster_networks):
        return Verdict(False, AuthzReason.OUTSIDE_CLUSTER_NETWORKS)
    if client_id is not None:
        return Verdict(True, AuthzReason.AUTHENTICATED)
    if policy in _AUTHENTICATED:
        return Verdict(False, AuthzReason.UNAUTHENTICATED)
    return Verdict(True, AuthzReason.UNAUTHENTICATED_ALLOWED)


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """The process's inbound policy, from ``ProxySettings``."""

    default: DefaultInboundPolicy = DefaultInboundPolicy.ALL_UNAUTHENTICATED
    cluster_networks: tuple[Network, ...] = DEFAULT_CLUSTER_NETWORKS

    @property
    def allows_all(self) -> bool:
        return self.default is DefaultInboundPolicy.ALL_UNAUTHENTICATED

    def decide(self, *, client_id: str | None, client_ip: str) -> Verdict:
        return decide(
            self.default,
            client_id=client_id,
            client_ip=client_ip,
            cluster_networks=self.cluster_networks,
        )


@dataclass(slots=True)
class PolicyMetrics:
    """Refusal counters, rendered with the proxy's metrics (``Metrics.collect``)."""

    policy: DefaultInboundPolicy = DefaultInboundPolicy.ALL_UNAUTHENTICATED
    http: dict[str, int] = field(default_factory=dict)
    tcp: dict[str, int] = field(default_factory=dict)

    def _labels(self, port: int, reason: AuthzReason, tls: str) -> str:
        return (
            f'direction="inbound",srv_port="{port}",policy="{self.policy.value}",'
            f'reason="{reason.value}",{tls}'
        )

    def deny_http(self, port: int, reason: AuthzReason, tls: str) -> None:
        _count(self.http, self._labels(port, reason, tls))

    def deny_tcp(self, port: int, reason: AuthzReason, tls: str) -> None:
        _count(self.tcp, self._labels(port, reason, tls))

    def render(self, lines: list[str]) -> None:
        for name, counts, what in (
            ("inbound_http_authz_deny_total", self.http, "HTTP requests refused (403)"),
            ("inbound_tcp_authz_deny_total", self.tcp, "opaque TCP connections refused"),
        ):
            lines.append(f"# HELP {name} {what} by the inbound policy.")
            lines.append(f"# TYPE {name} counter")
            lines.extend(f"{name}{{{labels}}} {value}" for labels, value in counts.items())


def _count(counts: dict[str, int], labels: str) -> None:
    if labels not in counts and len(counts) >= MAX_DENY_SERIES:
        labels = 'direction="inbound",reason="overflow"'
    counts[labels] = counts.get(labels, 0) + 1
