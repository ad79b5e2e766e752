"""Mutual TLS between proxies (Trio shell): connect meshed, accept meshed.

Outbound, ``connect_meshed`` opens TCP to an endpoint discovery called meshed, runs TLS 1.3 with
this proxy's certificate and SNI = the identity discovery promised, and returns the stream only if
the peer proved exactly that identity under our trust anchors; otherwise it raises a
``PeerTlsError`` naming why (``identity_mismatch``, ``untrusted_peer``, ``tls_handshake_failed``).

Inbound, once ``proxy.detect`` said TLS, ``read_client_hello`` reads the rest of the ClientHello
and ``decide_inbound_tls`` (``proxy/mtls/hello.py``) says whether it is for us; if so
``accept_meshed`` terminates it (client certificate required) and returns the plaintext stream,
the client's identity and the negotiated ALPN.

Both take the identity client's ``client_context`` / ``server_context`` afresh for every
connection: a renewed certificate applies to the next connection while established ones keep the
session they negotiated (TLS never re-checks a certificate after the handshake).
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from proxy.errors import UpstreamConnectRefused, UpstreamConnectTimeout, UpstreamUnreachable
from proxy.identity import IdentityClient, peer_identity
from proxy.mtls.errors import (
    ClientTlsError,
    ClientTlsHandshakeFailed,
    NoClientCertificate,
    NoLocalIdentity,
    PeerIdentityMismatch,
    PeerTlsError,
    TlsHandshakeFailed,
    UntrustedClient,
    UntrustedPeer,
)
from proxy.mtls.hello import ClientHello, MalformedClientHello, parse_client_hello
from proxy.mtls.settings import MtlsSettings
from proxy.net import format_address

__all__ = [
    "MESH_ALPN",
    "InboundMeshed",
    "PrefixedStream",
    "accept_meshed",
    "connect_meshed",
    "inbound_failure",
    "outbound_failure",
    "read_client_hello",
]

MESH_ALPN: Final = ("h2", "http/1.1")
"""What the proxy's ``IdentityClient(..., alpn_protocols=MESH_ALPN)`` offers and accepts."""

_HOSTNAME_MISMATCH: Final = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_NO_PEER_CERTIFICATE: Final = "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def _cause(error: BaseException) -> BaseException | None:
    return error.__cause__ if isinstance(error, trio.BrokenResourceError) else error


def outbound_failure(error: BaseException, expected: str, where: str) -> PeerTlsError:
    """The proxy error for a failed outbound handshake (``error`` as trio raised it)."""
    cause = _cause(error)
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code == _HOSTNAME_MISMATCH:
            return PeerIdentityMismatch(f"{where} is not {expected} ({cause.verify_message})")
        return UntrustedPeer(f"{where} presented an untrusted certificate: {cause.verify_message}")
    if isinstance(cause, ssl.SSLError):
        return TlsHandshakeFailed(f"TLS with {where} failed: {cause.reason or cause}")
    return TlsHandshakeFailed(f"TLS with {where} failed: the peer closed the connection")


def inbound_failure(error: BaseException, where: str) -> ClientTlsError:
    """The proxy error for a failed inbound handshake (``error`` as trio raised it)."""
    cause = _cause(error)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return UntrustedClient(
            f"{where} presented an untrusted certificate: {cause.verify_message}"
        )
    if isinstance(cause, ssl.SSLError):
        if cause.reason == _NO_PEER_CERTIFICATE:
            return NoClientCertificate(f"{where} sent no client certificate")
        return ClientTlsHandshakeFailed(f"TLS from {where} failed: {cause.reason or cause}")
    return ClientTlsHandshakeFailed(f"TLS from {where} failed: the client closed the connection")


async def _open_tcp(address: tuple[str, int], timeout: float) -> trio.SocketStream:
    """TCP to ``address`` with ``proxy.net.connect``'s error naming (no metrics record: the
    caller opens one once the peer is authenticated)."""
    host, port = address
    where = format_address(address)
    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        with trio.fail_after(timeout):
            await sock.connect((host, port))
    except trio.TooSlowError:
        sock.close()
        raise UpstreamConnectTimeout(
            f"connecting to {where} took longer than {timeout:g}s"
        ) from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ECONNREFUSED:
            raise UpstreamConnectRefused(f"{where} refused the connection") from exc
        raise UpstreamUnreachable(f"connecting to {where} failed: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _local_identity_ready(identity: IdentityClient, wait: float) -> None:
    if not identity.is_ready and wait > 0:
        with trio.move_on_after(wait):
            await identity.ready.wait()
    if not identity.is_ready:
        raise NoLocalIdentity(
            f"no certificate for {identity.settings.local_name} yet"
            + (f" (waited {wait:g}s)" if wait > 0 else "")
        )


async def connect_meshed(
    address: tuple[str, int],
    expected_identity: str,
    identity: IdentityClient,
    *,
    settings: MtlsSettings,
) -> trio.SSLStream[trio.SocketStream]:
    """An mTLS stream to ``address`` (an IP literal and port) whose peer is ``expected_identity``.

    Raises ``NoLocalIdentity``, the connect errors of ``proxy.net.connect``
    (``UpstreamConnectRefused``/``...Timeout``/``UpstreamUnreachable``) or a ``PeerTlsError``.
    The negotiated protocol is ``stream.selected_alpn_protocol()``.
    """
    await _local_identity_ready(identity, settings.identity_wait)
    context = identity.client_context  # fresh per connection: renewals apply to new ones
    tcp = await _open_tcp(address, settings.connect_timeout)
    tls = trio.SSLStream(tcp, context, server_hostname=expected_identity)
    where = format_address(address)
    try:
        with trio.fail_after(settings.handshake_timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(tls)
        raise TlsHandshakeFailed(
            f"TLS with {where} took longer than {settings.handshake_timeout:g}s"
        ) from None
    except (trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(tls)
        raise outbound_failure(exc, expected_identity, where) from None
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    if peer_identity(tls) != expected_identity:
        # check_hostname accepted it, so one SAN matches; a certificate with more names (or
        # non-DNS ones) still does not carry "exactly that identity".
        await trio.aclose_forcefully(tls)
        raise PeerIdentityMismatch(f"{where} does not carry exactly {expected_identity}")
    return tls


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose first bytes (already read by detection) are replayed first."""

    def __init__(self, prefix: bytes, transport: trio.SocketStream) -> None:
        self._prefix = prefix
        self.transport = transport

    def take_rest(self) -> bytes:
        """The replayed bytes not read yet, which the caller now owns (``TlsConn`` takes them
        over with the TLS session)."""
        rest, self._prefix = self._prefix, b""
        return rest

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return bytes(await self.transport.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


@dataclass(frozen=True, slots=True)
class InboundMeshed:
    """A terminated meshed connection: plaintext ``stream``, the proven client, the protocol."""

    stream: trio.SSLStream[PrefixedStream]
    client_id: str
    alpn: str | None


async def read_client_hello(
    receive: Callable[[], Awaitable[bytes]], prefix: bytes, *, timeout: float
) -> tuple[ClientHello | None, bytes]:
    """Read until ``prefix`` holds a whole ClientHello: ``(hello, prefix)``; ``hello`` is
    ``None`` when the bytes are not a readable one (or the client stalls or closes first)."""
    with trio.move_on_after(timeout):
        while True:
            try:
                hello = parse_client_hello(prefix)
            except MalformedClientHello:
                return None, prefix
            if hello is not None:
                return hello, prefix
            data = await receive()
            if not data:
                return None, prefix
            prefix += data
    return None, prefix


async def accept_meshed(
    transport: trio.SocketStream,
    prefix: bytes,
    identity: IdentityClient,
    *,
    settings: MtlsSettings,
    peer: str = "client",
) -> InboundMeshed:
    """Terminate the mTLS connection whose first bytes (``prefix``) were already read.

    Raises ``NoLocalIdentity`` or a ``ClientTlsError``; the caller still owns ``transport`` and
    closes it in either case (closing the returned stream closes it too).
    """
    if not identity.is_ready:
        raise NoLocalIdentity(f"no certificate for {identity.settings.local_name} yet")
    context = identity.server_context  # fresh per connection: renewals apply to new ones
    tls = trio.SSLStream(PrefixedStream(prefix, transport), context, server_side=True)
    try:
        with trio.fail_after(settings.handshake_timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        raise ClientTlsHandshakeFailed(
            f"TLS from {peer} took longer than {settings.handshake_timeout:g}s"
        ) from None
    except (trio.BrokenResourceError, OSError) as exc:
        raise inbound_failure(exc, peer) from None
    client_id = peer_identity(tls)
    if client_id is None:
        raise UntrustedClient(f"{peer}'s certificate does not carry exactly one DNS identity")
    return InboundMeshed(stream=tls, client_id=client_id, alpn=tls.selected_alpn_protocol())
