"""``proxy.origdst``: parsing the kernel's sockaddr answers and translating its errors."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from proxy.origdst import (
    OriginalDestinationError,
    original_destination,
    parse_sockaddr_in,
    parse_sockaddr_in6,
)


def _sockaddr_in(ip: str, port: int, family: int = socket.AF_INET) -> bytes:
    return struct.pack("=H", family) + port.to_bytes(2, "big") + socket.inet_aton(ip) + bytes(8)


def _sockaddr_in6(ip: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + port.to_bytes(2, "big")
        + (7).to_bytes(4, "big")
        + socket.inet_pton(socket.AF_INET6, ip)
        + struct.pack("=I", 3)
    )


@pytest.mark.parametrize(
    ("ip", "port"),
    [("10.96.0.1", 80), ("10.244.1.2", 8080), ("0.0.0.0", 0), ("255.255.255.255", 65535)],
)
def test_parse_sockaddr_in(ip: str, port: int) -> None:
    assert parse_sockaddr_in(_sockaddr_in(ip, port)) == (ip, port)


def test_parse_sockaddr_in6() -> None:
    assert parse_sockaddr_in6(_sockaddr_in6("fd00::1:2", 443)) == ("fd00::1:2", 443)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(_sockaddr_in("1.2.3.4", 1)[:8], id="short"),
        pytest.param(_sockaddr_in("1.2.3.4", 1, family=socket.AF_INET6), id="wrong-family"),
    ],
)
def test_parse_sockaddr_in_rejects(raw: bytes) -> None:
    with pytest.raises(OriginalDestinationError) as info:
        parse_sockaddr_in(raw)
    assert info.value.reason == "malformed_answer"


def test_parse_sockaddr_in6_rejects_short() -> None:
    with pytest.raises(OriginalDestinationError) as info:
        parse_sockaddr_in6(bytes(10))
    assert info.value.reason == "malformed_answer"


class _FakeSocket:
    """Only the two attributes ``original_destination`` touches."""

    def __init__(self, family: int, answer: bytes | OSError) -> None:
        self.family = family
        self._answer = answer
        self.asked: tuple[int, int, int] | None = None

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked = (level, option, size)
        if isinstance(self._answer, OSError):
            raise self._answer
        return self._answer


def test_ipv4_asks_sol_ip_so_original_dst() -> None:
    fake = _FakeSocket(socket.AF_INET, _sockaddr_in("10.96.0.10", 53))
    assert original_destination(fake) == ("10.96.0.10", 53)  # type: ignore[arg-type]
    assert fake.asked == (socket.IPPROTO_IP, 80, 16)


def test_ipv6_asks_sol_ipv6_ip6t_so_original_dst() -> None:
    fake = _FakeSocket(socket.AF_INET6, _sockaddr_in6("fd00::5", 8080))
    assert original_destination(fake) == ("fd00::5", 8080)  # type: ignore[arg-type]
    assert fake.asked == (socket.IPPROTO_IPV6, 80, 28)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOENT, "no_conntrack_entry"),
        (errno.ENOPROTOOPT, "not_supported"),
        (errno.EBADF, "bad_socket"),
        (errno.ENOTCONN, "bad_socket"),
        (errno.EPERM, "os_error"),
    ],
)
def test_errors_are_translated(code: int, reason: str) -> None:
    fake = _FakeSocket(socket.AF_INET, OSError(code, "boom"))
    with pytest.raises(OriginalDestinationError) as info:
        original_destination(fake)  # type: ignore[arg-type]
    assert info.value.reason == reason
    assert errno.errorcode[code] in str(info.value)


def test_unix_socket_is_unsupported() -> None:
    left, right = socket.socketpair()
    with left, right, pytest.raises(OriginalDestinationError) as info:
        original_destination(left)
    assert info.value.reason == "unsupported_family"
