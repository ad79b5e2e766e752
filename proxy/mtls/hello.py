"""Reading a TLS ClientHello without terminating it, and deciding what the inbound side does.

Theory of operation (sans-IO: bytes in, a verdict out). The inbound listener has already seen
the first bytes of a connection and ``proxy.detect`` called them TLS. Before terminating TLS the
proxy must know whether the client is talking to *us* (another proxy, SNI = our identity) or to
the application behind us (the app terminates TLS itself, SNI = some host name or none). So the
shell keeps reading until ``parse_client_hello`` returns a ``ClientHello`` (or ``None`` while more
bytes are needed), then asks ``decide_inbound_tls``:

- SNI equals our identity → ``TERMINATE`` (mutual TLS with our server context);
- anything else (another SNI, no SNI, a ClientHello we cannot parse, one larger than
  ``MAX_CLIENT_HELLO``) → ``PASSTHROUGH``: the bytes go to the application untouched, as opaque
  TCP, exactly as Linkerd does with TLS that is not addressed to its proxy.

Wire format (RFC 8446 section 4.1.2): records ``16 03 0x <len:2>`` carrying the handshake message
``01 <len:3> <legacy_version:2> <random:32> <session_id:1+> <cipher_suites:2+>
<compression:1+> <extensions:2+>``; extension 0 is ``server_name`` (a list of
``<type:1=host_name> <len:2> <name>``), extension 16 is ALPN. The message may span several
records; it is reassembled up to ``MAX_CLIENT_HELLO`` bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_CLIENT_HELLO",
    "ClientHello",
    "InboundTlsAction",
    "InboundTlsDecision",
    "MalformedClientHello",
    "decide_inbound_tls",
    "describe",
    "parse_client_hello",
]

# A ClientHello with many extensions (or post-quantum key shares) is a few KiB; more than this
# is not a proxy talking to us, so it is passed through without a verdict.
MAX_CLIENT_HELLO: Final = 16384
_RECORD_HEADER: Final = 5
_HANDSHAKE: Final = 0x16
_CLIENT_HELLO: Final = 0x01
_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_HOST_NAME: Final = 0


class MalformedClientHello(ValueError):
    """The bytes are not a ClientHello we can read (or it is larger than ``MAX_CLIENT_HELLO``)."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None
    """The SNI host name (lower-cased), ``None`` when the client sent none."""
    alpn: tuple[str, ...]
    """The protocols the client offers, in its order."""


def parse_client_hello(prefix: bytes) -> ClientHello | None:
    """The ClientHello at the start of ``prefix``; ``None`` while more bytes are needed.

    Raises ``MalformedClientHello`` when the bytes cannot be one (or it is too large).
    """
    message = _reassemble(prefix)
    if message is None:
        return None
    return _parse_message(message)


def _reassemble(prefix: bytes) -> bytes | None:
    """The whole handshake message from consecutive handshake records, or ``None`` for more."""
    body = bytearray()
    offset = 0
    while True:
        if len(prefix) - offset < _RECORD_HEADER:
            return None
        kind, major, length = prefix[offset], prefix[offset + 1], _u16(prefix, offset + 3)
        if kind != _HANDSHAKE or major != 0x03 or length == 0:
            raise MalformedClientHello("not a TLS handshake record")
        start = offset + _RECORD_HEADER
        if len(prefix) < start + length:
            if len(body) + length > MAX_CLIENT_HELLO + 4:
                raise MalformedClientHello("the ClientHello is too large")
            return None
        body += prefix[start : start + length]
        offset = start + length
        if len(body) >= 4:
            if body[0] != _CLIENT_HELLO:
                raise MalformedClientHello("the first handshake message is not a ClientHello")
            needed = 4 + ((body[1] << 16) | (body[2] << 8) | body[3])
            if needed > MAX_CLIENT_HELLO + 4:
                raise MalformedClientHello("the ClientHello is too large")
            if len(body) >= needed:
                return bytes(body[4:needed])


def _u16(data: bytes | bytearray, offset: int) -> int:
    return (data[offset] << 8) | data[offset + 1]


class _Reader:
    """Bounds-checked reads over one message; every overrun is ``MalformedClientHello``."""

    __slots__ = ("data", "end", "offset")

    def __init__(self, data: bytes, offset: int = 0, end: int | None = None) -> None:
        self.data, self.offset = data, offset
        self.end = len(data) if end is None else end

    def take(self, count: int) -> bytes:
        if self.offset + count > self.end:
            raise MalformedClientHello("truncated ClientHello")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        length = self.number(length_size)
        start = self.offset
        self.take(length)
        return _Reader(self.data, start, start + length)

    @property
    def done(self) -> bool:
        return self.offset >= self.end


def _parse_message(message: bytes) -> ClientHello:
    reader = _Reader(message)
    reader.take(2 + 32)  # legacy_version, random
    reader.vector(1)  # legacy_session_id
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # legacy_compression_methods
    if reader.done:
        return ClientHello(server_name=None, alpn=())  # no extensions at all (TLS 1.0 style)
    extensions = reader.vector(2)
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    while not extensions.done:
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(data)
        elif kind == _EXT_ALPN:
            alpn = _alpn(data)
    return ClientHello(server_name=server_name, alpn=alpn)


def _server_name(data: _Reader) -> str | None:
    names = data.vector(2)
    while not names.done:
        kind = names.number(1)
        name = names.vector(2)
        if kind == _HOST_NAME:
            raw = name.take(name.end - name.offset)
            try:
                return raw.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                raise MalformedClientHello("the server name is not ASCII") from None
    return None


def _alpn(data: _Reader) -> tuple[str, ...]:
    protocols = data.vector(2)
    offered: list[str] = []
    while not protocols.done:
        name = protocols.vector(1)
        offered.append(name.take(name.end - name.offset).decode("ascii", "replace"))
    return tuple(offered)


class InboundTlsAction(enum.Enum):
    TERMINATE = "terminate"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class InboundTlsDecision:
    action: InboundTlsAction
    reason: str
    """A stable slug for logs and metrics (see ``_REASONS``)."""


_REASONS: Final = {
    "sni_is_local_identity": "the client addressed this proxy's identity",
    "sni_not_local_identity": "the client addressed another name (TLS for the application)",
    "no_sni": "the client sent no server name (TLS for the application)",
    "client_hello_malformed": "the ClientHello could not be read (passed on untouched)",
}


def describe(reason: str) -> str:
    """The human sentence for a decision's ``reason`` slug."""
    return _REASONS.get(reason, reason)


def decide_inbound_tls(hello: ClientHello | None, local_identity: str) -> InboundTlsDecision:
    """What to do with a TLS connection arriving inbound; ``hello`` is ``None`` if unreadable."""
    if hello is None:
        return InboundTlsDecision(InboundTlsAction.PASSTHROUGH, "client_hello_malformed")
    if hello.server_name is None:
        return InboundTlsDecision(InboundTlsAction.PASSTHROUGH, "no_sni")
    if hello.server_name.lower().rstrip(".") == local_identity.lower():
        return InboundTlsDecision(InboundTlsAction.TERMINATE, "sni_is_local_identity")
    return InboundTlsDecision(InboundTlsAction.PASSTHROUGH, "sni_not_local_identity")
