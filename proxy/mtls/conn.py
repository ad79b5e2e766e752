"""``TlsConn``: a ``proxy.net.Conn`` whose bytes travel over mutual TLS.

The protocol shells (``proxy/http1.py``, ``proxy/http2.py``, ``proxy/tcp.py``) only call
``receive``/``receive_answer``/``send``/``send_nowait``/``send_eof``/``readable_now``/``abort``/
``close`` on a ``Conn``; this subclass implements them over TLS so every shell carries meshed
connections unchanged. Errors become ``ClientClosed``/``UpstreamClosed`` as for plain connections.

The handshake is trio's (``trio.SSLStream.do_handshake`` in ``proxy/mtls/streams.py``); then the
connection takes over the stream's ``ssl.SSLObject`` and its two memory BIOs and moves records
with the same non-blocking read(2)/write(2) as a plain ``Conn``: a request over mTLS costs one
``SSLObject.read`` and one ``SSLObject.write`` more than in plaintext, not trio's stream layers
(``SSLStream`` over ``SocketStream``: a third of the proxy's CPU per meshed request in profiles).
Records are written in order by one task at a time; a task that finds another one waiting for
the socket to drain waits behind it.

End-of-stream follows TCP's meaning: a TLS ``close_notify`` *or* a bare FIN (a peer that closed
the socket without ``close_notify``) reads as ``b""``; a reset or a TLS failure is an error.

Half-close (``send_eof``) sends ``close_notify`` and keeps reading, which TLS 1.3 allows (RFC 8446
section 6.1). Python's ``SSLObject.unwrap()`` calls ``SSL_shutdown`` twice and the second call
reads: if undecrypted records were waiting it fails (``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``) and
loses them. So ``send_eof`` first waits until the reading task has consumed every buffered byte
(bytes only enter the incoming BIO inside ``receive``, which decrypts in the same step, so nothing
can arrive between that check and ``unwrap``).

The takeover reads three private attributes of ``trio.SSLStream`` (``_ssl_object``, ``_incoming``,
``_outgoing``); ``tests/mtls/test_mtls_conn.py`` fails if a trio upgrade changes them.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import trio

from proxy.errors import ClientClosed, ProxyError, UpstreamClosed
from proxy.metrics import Metrics, TcpConnection
from proxy.net import RECEIVE_SIZE, Conn

__all__ = ["TlsConn", "send_close_notify"]

_BUFFER_POLL = 0.005  # seconds between checks while the reader drains buffered records


async def send_close_notify(tls: trio.SSLStream[Any]) -> None:
    """Half-close a ``trio.SSLStream``: our ``close_notify`` goes out, reading continues until
    the peer's (for streams the proxy does not move records for itself, e.g. tap)."""
    # No event marks "the reader consumed the buffer", so poll (rare: only at half-close).
    while tls._incoming.pending or tls._ssl_object.pending():  # noqa: ASYNC110
        await trio.sleep(_BUFFER_POLL)
    await tls._retry(tls._ssl_object.unwrap, ignore_want_read=True)


class TlsConn(Conn):
    """One meshed connection, counted, errors translated to the side it faces."""

    __slots__ = ("_drained", "_ended", "_failure", "_in", "_obj", "_out", "_writing")

    def __init__(
        self,
        tls: trio.SSLStream[Any],
        transport: trio.SocketStream,
        metrics: Metrics,
        stats: TcpConnection,
        *,
        upstream: bool,
    ) -> None:
        """``tls``: a stream over ``transport`` (directly or through a ``PrefixedStream``) whose
        handshake is done; this connection moves its records from now on."""
        super().__init__(transport, metrics, stats, upstream=upstream)
        self._obj: ssl.SSLObject = tls._ssl_object
        self._in: ssl.MemoryBIO = tls._incoming
        self._out: ssl.MemoryBIO = tls._outgoing
        take_rest = getattr(tls.transport_stream, "take_rest", None)
        if take_rest is not None:  # bytes read before the handshake that it did not need
            self._in.write(take_rest())
        self._failure: type[ProxyError] = UpstreamClosed if upstream else ClientClosed
        self._ended = False  # end of stream read: close_notify or FIN
        self._writing = False  # a task is waiting for the socket to take records
        self._drained = trio.lowlevel.ParkingLot()  # tasks waiting behind it

    @property
    def _buffered(self) -> bool:
        return bool(self._in.pending or self._obj.pending())

    async def receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        if self._ended:
            return b""
        if self._in.pending or self._obj.pending():
            data = self._decrypt(max_bytes)
            if data is not None:
                return data
        while True:
            if self._out.pending and not self._writing:
                # What reading made OpenSSL send (the answer to a TLS 1.3 KeyUpdate). Never
                # wait behind a writer stuck on a full socket: the peer may be waiting for us
                # to read before it reads; the writer sends these records anyway.
                await self._flush()
            records = await self._read(RECEIVE_SIZE)
            if records:
                self._in.write(records)
            else:
                self._in.write_eof()
            data = self._decrypt(max_bytes)
            if data is not None:
                return data

    async def receive_answer(self) -> bytes:
        if not (self._ended or self._in.pending or self._obj.pending()):
            self._emptied = True  # the socket read waits for readiness first
        return await self.receive()

    def _decrypt(self, max_bytes: int) -> bytes | None:
        """Plaintext from the records received so far (``b""`` at end of stream), or ``None``
        when a whole record is not there yet."""
        try:
            data = self._obj.read(max_bytes)
        except ssl.SSLWantReadError:
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify after ours; bare FIN
            data = b""
        except ssl.SSLError as exc:
            raise self._failure(f"TLS receive failed: {exc.reason or exc}") from exc
        if not data:
            self._ended = True
        self.stats.read += len(data)
        return data

    async def send(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise self._failure(f"TLS send failed: {exc.reason or exc}") from exc
        await self._flush()
        self.stats.written += len(data)

    def send_some(self, data: bytes | bytearray) -> int:
        return 0  # records are written whole, by ``send``

    def send_nowait(self, data: bytes) -> None:
        if self._writing:
            return  # records of another task are still going out: ours would overtake them
        with contextlib.suppress(ssl.SSLError):
            self._obj.write(data)
            super().send_nowait(self._out.read())

    async def _flush(self) -> None:
        """Write the records waiting in the outgoing BIO, in order, one task at a time."""
        while self._writing:
            await self._drained.park()
        records = self._out.read()
        if not records:
            return
        self._writing = True
        try:
            while records:
                await self._write(records)
                records = self._out.read()  # what other tasks encrypted meanwhile
        finally:
            self._writing = False
            if self._drained:
                self._drained.unpark_all()

    async def send_eof(self) -> None:
        # No event marks "the reader consumed the buffer", so poll (rare: only at half-close).
        while self._buffered and not self._ended:  # noqa: ASYNC110
            await trio.sleep(_BUFFER_POLL)
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # the second SSL_shutdown waits for the peer's close_notify: reading does
        except ssl.SSLError as exc:
            raise self._failure(f"TLS shutdown failed: {exc.reason or exc}") from exc
        await self._flush()

    def readable_now(self) -> bool:
        # Decrypted bytes waiting count too; otherwise the socket decides, as for plain TCP
        # (TLS 1.3 session tickets ride along with the server's first response, so an idle
        # connection that turns readable later carries close_notify, a FIN or junk).
        return self._ended or self._buffered or super().readable_now()
