"""Parse the ``authority`` a proxy asks about into a lookup target, or refuse it with a reason.

Accepted forms (``<domain>`` is the cluster domain, ``cluster.local`` by default; a trailing dot
and upper case are accepted and normalised; the port defaults to 80, as in Linkerd):

==========================================  =========================================
``web.shop.svc.<domain>:8080``              a Service port
``web-0.web.shop.svc.<domain>:8080``        one StatefulSet pod behind a headless Service
``10.96.0.10:8080``                         a Service ClusterIP, else a pod IP
``[fd00::10]:8080``                         the same, IPv6
==========================================  =========================================

Anything else is refused with one of the stable slugs in :data:`REASONS` (a metric label) and
its sentence (the 400 body).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_PORT",
    "REASONS",
    "AuthorityRefused",
    "IPTarget",
    "ServiceTarget",
    "Target",
    "parse_authority",
]

DEFAULT_PORT: Final = 80
_MAX_AUTHORITY: Final = 260  # a 253-character name, ':' and a 5-digit port, with a little slack
_LABEL: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

REASONS: Final[dict[str, str]] = {
    "empty": "the authority is empty",
    "too_long": "the authority is longer than 260 characters",
    "bad_port": "the port is not a number",
    "port_out_of_range": "the port is outside 1-65535",
    "bad_ip": "the bracketed host is not an IPv6 address",
    "unspecified_ip": "the address is unspecified (0.0.0.0 or ::)",
    "bad_label": "a name label is not a DNS-1123 label (a-z, 0-9, '-', at most 63 characters)",
    "not_cluster_name": "the name is not <service>.<namespace>.svc.<cluster-domain> "
    "or <hostname>.<service>.<namespace>.svc.<cluster-domain>",
}


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """A Service port, or one pod of it by hostname (StatefulSets)."""

    namespace: str
    service: str
    port: int
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class IPTarget:
    """An IP: a Service ClusterIP when one matches, else a pod IP (one endpoint)."""

    ip: str
    port: int


Target = ServiceTarget | IPTarget


@dataclass(frozen=True, slots=True)
class AuthorityRefused:
    """Why an authority was refused: ``reason`` is a slug from :data:`REASONS`."""

    reason: str
    authority: str

    @property
    def message(self) -> str:
        return f"invalid authority {self.authority[:80]!r}: {REASONS[self.reason]}"


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _split_port(text: str) -> tuple[str, int]:
    """``host`` and port; a bracketed IPv6 host keeps its brackets."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Refused("bad_ip")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _Refused("bad_port")
        return host, _parse_port(rest[1:] if rest else None)
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, DEFAULT_PORT
    return host, _parse_port(port)


def _parse_port(text: str | None) -> int:
    if text is None:
        return DEFAULT_PORT
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise _Refused("bad_port")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _Refused("port_out_of_range")
    return port


def parse_authority(authority: str, *, cluster_domain: str) -> Target | AuthorityRefused:
    """Return the target ``authority`` names, or why it is refused (never raises)."""
    try:
        return _parse(authority.strip(), cluster_domain)
    except _Refused as refused:
        return AuthorityRefused(refused.reason, authority)


def _parse(text: str, cluster_domain: str) -> Target:
    if not text:
        raise _Refused("empty")
    if len(text) > _MAX_AUTHORITY:
        raise _Refused("too_long")
    host, port = _split_port(text)
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if host.startswith("["):
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _Refused("bad_ip") from None
        return _ip_target(ip, port)
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return _name_target(host, port, cluster_domain)
    return _ip_target(ip, port)


def _ip_target(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Target:
    if ip.is_unspecified:
        raise _Refused("unspecified_ip")
    return IPTarget(ip=str(ip), port=port)


def _name_target(host: str, port: int, cluster_domain: str) -> Target:
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise _Refused("bad_label")
    suffix = ["svc", *cluster_domain.lower().strip(".").split(".")]
    if labels[-len(suffix) :] != suffix:
        raise _Refused("not_cluster_name")
    prefix = labels[: -len(suffix)]
    if len(prefix) == 2:
        return ServiceTarget(namespace=prefix[1], service=prefix[0], port=port)
    if len(prefix) == 3:
        return ServiceTarget(namespace=prefix[2], service=prefix[1], port=port, hostname=prefix[0])
    raise _Refused("not_cluster_name")
