"""The pod's interception rules, built as data.

Theory of operation (Linkerd's proxy-init layout, ``nat`` table only):

- Inbound: ``PREROUTING`` jumps to ``MESHLET_INIT_REDIRECT``. That chain returns early for
  skipped ports (always including the proxy's own tap 4190 and admin 4191 ports, so probes and
  scrapes reach it directly) and for skipped source subnets, then redirects every other TCP
  connection to the proxy's inbound port 4143.
- Outbound: ``OUTPUT`` jumps to ``MESHLET_INIT_OUTPUT``. That chain returns early for the
  proxy's own user (and group, when given) so the proxy's upstream connections are not looped
  back into itself, for anything leaving through ``lo``, for skipped destination ports and for
  skipped destination subnets, then redirects every other TCP connection to 4140.

Each rule carries ``-m comment --comment meshlet-init/<name>`` so an operator reading
``iptables-save`` can tell where it came from, and so removal can find our jumps.

Rules are rendered with their options in the order ``iptables-save`` prints them (``-s -d -o
-p``, then matches, then ``-j``), so the rules read back from the kernel compare equal to the
rules built here token by token; that comparison is what makes a second run change nothing.

Nothing here runs a command: ``build_rules`` is a pure function of ``InitConfig``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from meshlet.names import (
    PROXY_ADMIN_PORT,
    PROXY_INBOUND_PORT,
    PROXY_OUTBOUND_PORT,
    PROXY_TAP_PORT,
    PROXY_UID,
)

__all__ = [
    "COMMENT_PREFIX",
    "INBOUND_CHAIN",
    "MAX_ID",
    "MAX_MULTIPORT_SLOTS",
    "OUTBOUND_CHAIN",
    "Family",
    "InitConfig",
    "PortRange",
    "Rule",
    "RuleSet",
    "build_rules",
    "chunk_ports",
    "parse_port_ranges",
    "parse_subnets",
]

INBOUND_CHAIN: Final = "MESHLET_INIT_REDIRECT"
OUTBOUND_CHAIN: Final = "MESHLET_INIT_OUTPUT"
COMMENT_PREFIX: Final = "meshlet-init/"
# The kernel's xt_multiport holds 15 port slots; a range a:b takes two of them.
MAX_MULTIPORT_SLOTS: Final = 15
# The largest uid/gid iptables' owner match takes (2**32 - 1 means "no id" to the kernel).
MAX_ID: Final = 2**32 - 2
# Ports that must never be redirected inbound: the proxy's own tap and admin listeners.
ALWAYS_SKIPPED_INBOUND: Final = (PROXY_TAP_PORT, PROXY_ADMIN_PORT)

Family = Literal["ipv4", "ipv6"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, order=True)
class PortRange:
    """A single port (``first == last``) or an inclusive range, written ``a:b`` for iptables."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last <= 65535:
            raise ValueError(f"invalid port range {self.first}-{self.last}: ports are 1-65535")

    @property
    def slots(self) -> int:
        return 1 if self.first == self.last else 2

    def render(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


@dataclass(frozen=True)
class InitConfig:
    """What ``meshlet-proxy-init`` installs; defaults are the contract in meshlet/names.py."""

    incoming_proxy_port: int = PROXY_INBOUND_PORT
    outgoing_proxy_port: int = PROXY_OUTBOUND_PORT
    # The proxy's UID: its own connections must bypass the outbound redirect.
    proxy_uid: int = PROXY_UID
    # Optional GID, for clusters that run the proxy with a fixed group.
    proxy_gid: int | None = None
    inbound_ports_to_ignore: tuple[PortRange, ...] = ()
    outbound_ports_to_ignore: tuple[PortRange, ...] = ()
    # Traffic from these subnets (inbound) and to them (outbound) bypasses the proxy.
    subnets_to_ignore: tuple[Network, ...] = ()
    family: Family = "ipv4"

    def __post_init__(self) -> None:
        for name in ("incoming_proxy_port", "outgoing_proxy_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ValueError(f"{name.replace('_', '-')} {port} is not a port (1-65535)")
        if self.incoming_proxy_port == self.outgoing_proxy_port:
            raise ValueError(
                f"incoming-proxy-port and outgoing-proxy-port are both {self.incoming_proxy_port}: "
                "inbound and outbound connections must reach different proxy listeners"
            )
        for name in ("proxy_uid", "proxy_gid"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_ID:
                flag = name.replace("_", "-")
                raise ValueError(f"{flag} {value} is not a user or group id (0-{MAX_ID})")
        version = 4 if self.family == "ipv4" else 6
        for net in self.subnets_to_ignore:
            if net.version != version:
                raise ValueError(f"subnet {net} is not an {self.family} subnet")


@dataclass(frozen=True)
class Rule:
    """One ``-A <chain> ...`` line: ``spec`` is everything after the chain, comment included."""

    chain: str
    name: str
    spec: tuple[str, ...]

    def render(self) -> str:
        return " ".join(("-A", self.chain, *(_quote(token) for token in self.spec)))


@dataclass(frozen=True)
class RuleSet:
    """Our chains (created empty, then filled) and every rule in the order it is appended."""

    chains: tuple[str, ...]
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def in_chain(self, chain: str) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.chain == chain)

    def render(self) -> str:
        """The rules as ``iptables-restore --noflush`` input (what ``--dry-run`` prints)."""
        lines = ["*nat", *(f":{chain} - [0:0]" for chain in self.chains)]
        lines += [rule.render() for rule in self.rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def build_rules(config: InitConfig) -> RuleSet:
    """The ordered rules for ``config`` (see the module docstring for the layout)."""
    rules: list[Rule] = []

    inbound_skips = _merge((*_single(ALWAYS_SKIPPED_INBOUND), *config.inbound_ports_to_ignore))
    rules += _ignore_ports(INBOUND_CHAIN, inbound_skips)
    for net in config.subnets_to_ignore:
        rules.append(_rule(INBOUND_CHAIN, f"ignore-subnet-{net}", "-s", str(net), "-j", "RETURN"))
    rules.append(
        _rule(
            INBOUND_CHAIN,
            "redirect-all-incoming-to-proxy-port",
            *("-p", "tcp", "-j", "REDIRECT", "--to-ports", str(config.incoming_proxy_port)),
        )
    )
    rules.append(_rule("PREROUTING", "install-prerouting", "-j", INBOUND_CHAIN))

    rules.append(
        _rule(
            OUTBOUND_CHAIN,
            "ignore-proxy-user-id",
            *("-m", "owner", "--uid-owner", str(config.proxy_uid), "-j", "RETURN"),
        )
    )
    if config.proxy_gid is not None:
        rules.append(
            _rule(
                OUTBOUND_CHAIN,
                "ignore-proxy-group-id",
                *("-m", "owner", "--gid-owner", str(config.proxy_gid), "-j", "RETURN"),
            )
        )
    rules.append(_rule(OUTBOUND_CHAIN, "ignore-loopback", "-o", "lo", "-j", "RETURN"))
    rules += _ignore_ports(OUTBOUND_CHAIN, _merge(config.outbound_ports_to_ignore))
    for net in config.subnets_to_ignore:
        rules.append(_rule(OUTBOUND_CHAIN, f"ignore-subnet-{net}", "-d", str(net), "-j", "RETURN"))
    rules.append(
        _rule(
            OUTBOUND_CHAIN,
            "redirect-all-outgoing-to-proxy-port",
            *("-p", "tcp", "-j", "REDIRECT", "--to-ports", str(config.outgoing_proxy_port)),
        )
    )
    rules.append(_rule("OUTPUT", "install-output", "-j", OUTBOUND_CHAIN))
    return RuleSet(chains=(INBOUND_CHAIN, OUTBOUND_CHAIN), rules=tuple(rules))


def chunk_ports(ports: Sequence[PortRange]) -> list[list[PortRange]]:
    """Split ``ports`` into groups that each fit one multiport match (15 slots)."""
    chunks: list[list[PortRange]] = []
    used = MAX_MULTIPORT_SLOTS
    for port in ports:
        if used + port.slots > MAX_MULTIPORT_SLOTS:
            chunks.append([])
            used = 0
        chunks[-1].append(port)
        used += port.slots
    return chunks


def parse_port_ranges(text: str) -> tuple[PortRange, ...]:
    """``"4190,4191,5000-5010"`` (``a:b`` also accepted) to sorted, merged ``PortRange``s."""
    ranges: list[PortRange] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        first, sep, last = item.replace(":", "-").partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise ValueError(f"invalid port {item!r}: expected a number or a range like 5000-5010")
        low, high = int(first), int(last) if sep else int(first)
        if low > high:
            raise ValueError(f"invalid port range {item!r}: the first port is above the last")
        ranges.append(PortRange(low, high))
    return _merge(ranges)


def parse_subnets(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8,192.168.0.0/16"`` to networks; host bits set is an error, not a guess."""
    nets: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid subnet {item!r}: {exc}") from None
    return tuple(dict.fromkeys(nets))


def _ignore_ports(chain: str, ports: Sequence[PortRange]) -> list[Rule]:
    rules = []
    for chunk in chunk_ports(ports):
        listed = ",".join(port.render() for port in chunk)
        rules.append(
            _rule(
                chain,
                f"ignore-port-{listed}",
                *("-p", "tcp", "-m", "multiport", "--dports", listed, "-j", "RETURN"),
            )
        )
    return rules


def _rule(chain: str, name: str, *spec: str) -> Rule:
    # iptables-save prints the comment match after the other matches and before the target.
    target = spec.index("-j")
    comment = ("-m", "comment", "--comment", COMMENT_PREFIX + name)
    return Rule(chain=chain, name=name, spec=(*spec[:target], *comment, *spec[target:]))


def _single(ports: Iterable[int]) -> tuple[PortRange, ...]:
    return tuple(PortRange(port, port) for port in ports)


def _merge(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sorted ranges, duplicates dropped and overlapping ones joined (4190,4191 stay two ports)."""
    merged: list[PortRange] = []
    for current in sorted(ranges):
        if merged and current.first <= merged[-1].last:
            last = merged[-1]
            merged[-1] = PortRange(last.first, max(last.last, current.last))
        else:
            merged.append(current)
    return tuple(merged)


def _quote(token: str) -> str:
    """Quote like iptables-save does for comments; other tokens never need it."""
    if token.startswith(COMMENT_PREFIX):
        return f'"{token}"'
    return token
