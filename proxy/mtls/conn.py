"""``TlsConn``: a ``proxy.net.Conn`` whose bytes travel over mutual TLS.

The protocol shells (``proxy/http1.py``, ``proxy/http2.py``, ``proxy/tcp.py``) only call
``receive``/``send``/``send_eof``/``readable_now``/``abort``/``close`` on a ``Conn``; this
subclass implements them over a ``trio.SSLStream`` so every shell carries meshed connections
unchanged. Errors become ``ClientClosed``/``UpstreamClosed`` as for plain connections.

End-of-stream follows TCP's meaning: a TLS ``close_notify`` *or* a bare FIN (a peer that closed
the socket without ``close_notify``) reads as ``b""``; a reset or a TLS failure is an error.

Half-close (``send_eof``) sends ``close_notify`` and keeps reading, which TLS 1.3 allows (RFC 8446
section 6.1). Python's ``SSLObject.unwrap()`` calls ``SSL_shutdown`` twice and the second call
reads: if undecrypted records were waiting it fails (``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``) and
loses them. So ``send_eof`` first waits until the reading task has consumed every buffered byte,
and only then sends ``close_notify`` through trio's own retry loop (which does not yield before
calling into OpenSSL, so nothing can arrive in between). This uses two private attributes of
``trio.SSLStream``; ``tests/mtls/test_mtls_conn.py`` fails if a trio upgrade changes them.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from proxy.errors import ClientClosed, ProxyError, UpstreamClosed
from proxy.metrics import Metrics, TcpConnection
from proxy.net import RECEIVE_SIZE, Conn

__all__ = ["TlsConn", "send_close_notify"]

_BUFFER_POLL = 0.005  # seconds between checks while the reader drains buffered records


async def send_close_notify(tls: trio.SSLStream[Any]) -> None:
    """Half-close ``tls``: our ``close_notify`` goes out, reading continues until the peer's."""
    # No event marks "the reader consumed the buffer", so poll (rare: only at half-close).
    while tls._incoming.pending or tls._ssl_object.pending():  # noqa: ASYNC110
        await trio.sleep(_BUFFER_POLL)
    await tls._retry(tls._ssl_object.unwrap, ignore_want_read=True)


def _is_clean_end(error: BaseException) -> bool:
    cause = error.__cause__
    # SSLZeroReturnError: the peer's close_notify after ours; SSLEOFError: FIN without one.
    return isinstance(cause, ssl.SSLZeroReturnError | ssl.SSLEOFError)


class TlsConn(Conn):
    """One meshed connection, counted, errors translated to the side it faces."""

    __slots__ = ("_failure", "tls")

    def __init__(
        self,
        tls: trio.SSLStream[Any],
        transport: trio.SocketStream,
        metrics: Metrics,
        stats: TcpConnection,
        *,
        upstream: bool,
    ) -> None:
        super().__init__(transport, metrics, stats, upstream=upstream)
        self.tls = tls
        self._failure: type[ProxyError] = UpstreamClosed if upstream else ClientClosed

    async def receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        try:
            data = bytes(await self.tls.receive_some(max_bytes))
        except trio.BrokenResourceError as exc:
            if not _is_clean_end(exc):
                raise self._failure(f"TLS receive failed: {_describe(exc)}") from exc
            data = b""
        except (OSError, trio.ClosedResourceError) as exc:
            raise self._failure(f"TLS receive failed: {_describe(exc)}") from exc
        self.stats.read += len(data)
        return data

    async def send(self, data: bytes) -> None:
        try:
            await self.tls.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._failure(f"TLS send failed: {_describe(exc)}") from exc
        self.stats.written += len(data)

    async def send_eof(self) -> None:
        try:
            await send_close_notify(self.tls)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._failure(f"TLS shutdown failed: {_describe(exc)}") from exc

    def readable_now(self) -> bool:
        # Decrypted bytes waiting count too; otherwise the socket decides, as for plain TCP
        # (TLS 1.3 session tickets ride along with the server's first response, so an idle
        # connection that turns readable later carries close_notify, a FIN or junk).
        return bool(self.tls._ssl_object.pending()) or super().readable_now()


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if cause is None:
        return type(exc).__name__
    if isinstance(cause, ssl.SSLError):
        return str(cause.reason or cause)
    return str(cause) or type(cause).__name__
