"""The original destination of a connection that iptables redirected to the proxy.

``meshlet-proxy-init`` installs ``REDIRECT`` rules in the nat table, so the kernel rewrites the
destination of every intercepted TCP connection to the proxy's own listener (4143 inbound,
4140 outbound). Connection tracking remembers the address the client actually asked for; the
``SO_ORIGINAL_DST`` socket option (``IP6T_SO_ORIGINAL_DST`` for IPv6, the same number on the
``SOL_IPV6`` level) hands it back for an accepted socket. The answer is a raw ``sockaddr_in`` /
``sockaddr_in6``, parsed here by the pure functions ``parse_sockaddr_in`` and
``parse_sockaddr_in6``.

Errors are translated into ``OriginalDestinationError`` with a ``reason`` slug (a metric label)
and a sentence naming the cause:

- ``no_conntrack_entry`` (ENOENT): the kernel holds no NAT record for this connection, e.g. it
  reached the listener directly rather than through an iptables redirect;
- ``not_supported`` (ENOPROTOOPT / EOPNOTSUPP): connection tracking is not available for this
  socket (no ``nf_conntrack`` for the family, or not a TCP socket);
- ``unsupported_family``: the socket is neither AF_INET nor AF_INET6;
- ``bad_socket`` (EBADF / ENOTSOCK / ENOTCONN): the socket is closed or unconnected;
- ``malformed_answer``: the kernel answer could not be parsed (should never happen);
- ``os_error``: anything else, with the errno name.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Final

__all__ = [
    "IP6T_SO_ORIGINAL_DST",
    "SO_ORIGINAL_DST",
    "OriginalDestinationError",
    "original_destination",
    "parse_sockaddr_in",
    "parse_sockaddr_in6",
]

# linux/netfilter_ipv4.h: SO_ORIGINAL_DST 80 (level SOL_IP);
# linux/netfilter_ipv6/ip6_tables.h: IP6T_SO_ORIGINAL_DST 80 (level SOL_IPV6).
SO_ORIGINAL_DST: Final = 80
IP6T_SO_ORIGINAL_DST: Final = 80
# On Linux the socket-option levels SOL_IP / SOL_IPV6 equal the protocol numbers.
_SOL_IP: Final = socket.IPPROTO_IP
_SOL_IPV6: Final = socket.IPPROTO_IPV6

# struct sockaddr_in: sa_family (host order u16), sin_port (network order u16),
# sin_addr (4 bytes), 8 bytes of padding.
_SOCKADDR_IN: Final = struct.Struct("=H2s4s8x")
# struct sockaddr_in6: sa_family, sin6_port, sin6_flowinfo (u32), sin6_addr (16), scope id (u32).
_SOCKADDR_IN6: Final = struct.Struct("=H2s4s16sI")

_REASONS_BY_ERRNO: Final = {
    errno.ENOENT: (
        "no_conntrack_entry",
        "the kernel holds no NAT record for this connection (it was not redirected by iptables)",
    ),
    errno.ENOPROTOOPT: (
        "not_supported",
        "connection tracking does not support this socket (nf_conntrack missing or not TCP)",
    ),
    errno.EOPNOTSUPP: (
        "not_supported",
        "connection tracking does not support this socket (nf_conntrack missing or not TCP)",
    ),
    errno.EBADF: ("bad_socket", "the socket is closed"),
    errno.ENOTSOCK: ("bad_socket", "the file descriptor is not a socket"),
    errno.ENOTCONN: ("bad_socket", "the socket is not connected"),
}


class OriginalDestinationError(Exception):
    """The original destination of a connection could not be recovered.

    ``reason`` is a stable slug (usable as a metric label); ``str(error)`` is the sentence.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_sockaddr_in(raw: bytes) -> tuple[str, int]:
    """``(ip, port)`` from the bytes of a ``struct sockaddr_in``."""
    if len(raw) < _SOCKADDR_IN.size:
        raise OriginalDestinationError(
            "malformed_answer", f"sockaddr_in is {len(raw)} bytes, expected {_SOCKADDR_IN.size}"
        )
    family, port, addr = _SOCKADDR_IN.unpack_from(raw)
    if family != socket.AF_INET:
        raise OriginalDestinationError(
            "malformed_answer", f"sockaddr_in has address family {family}, expected AF_INET"
        )
    return str(ipaddress.IPv4Address(addr)), int.from_bytes(port, "big")


def parse_sockaddr_in6(raw: bytes) -> tuple[str, int]:
    """``(ip, port)`` from the bytes of a ``struct sockaddr_in6`` (flow info and scope dropped)."""
    if len(raw) < _SOCKADDR_IN6.size:
        raise OriginalDestinationError(
            "malformed_answer", f"sockaddr_in6 is {len(raw)} bytes, expected {_SOCKADDR_IN6.size}"
        )
    family, port, _flowinfo, addr, _scope = _SOCKADDR_IN6.unpack_from(raw)
    if family != socket.AF_INET6:
        raise OriginalDestinationError(
            "malformed_answer", f"sockaddr_in6 has address family {family}, expected AF_INET6"
        )
    return str(ipaddress.IPv6Address(addr)), int.from_bytes(port, "big")


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """The ``(ip, port)`` the client connected to before iptables redirected it to ``sock``.

    ``sock`` is an accepted TCP socket (a ``trio.socket.SocketType`` works too: it has the same
    ``family`` and ``getsockopt``). The call is a single non-blocking system call.
    """
    family = sock.family
    try:
        if family == socket.AF_INET:
            raw = sock.getsockopt(_SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN.size)
            return parse_sockaddr_in(raw)
        if family == socket.AF_INET6:
            raw = sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6.size)
            return parse_sockaddr_in6(raw)
    except OSError as exc:
        raise _translate(exc) from exc
    raise OriginalDestinationError(
        "unsupported_family", f"socket family {family!r} has no original destination"
    )


def _translate(exc: OSError) -> OriginalDestinationError:
    code = exc.errno if exc.errno is not None else 0
    reason, sentence = _REASONS_BY_ERRNO.get(code, ("os_error", "getsockopt failed"))
    name = errno.errorcode.get(code, str(code))
    return OriginalDestinationError(reason, f"SO_ORIGINAL_DST: {sentence} ({name})")
