"""The I/O edge: sockets in, the proxy's error tree out, bytes counted on the way.

``Conn`` wraps one ``trio.SocketStream`` with the metrics record of that connection and turns
every ``OSError``/``trio.BrokenResourceError`` into ``ClientClosed`` or ``UpstreamClosed``
(whose fault depends on which side the socket faces). ``connect`` opens an upstream connection
within a timeout and names why it failed (refused → 502, timeout → 504).

``proxy.mtls.conn.TlsConn`` is the same interface over a mutual-TLS session, so the protocol
shells and ``splice`` never know which one they hold. Every connection carries its TLS metric
label text (``tls_labels``) and, when the peer proved an identity over mTLS, ``peer_id``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
from typing import Final

import trio

from proxy.errors import (
    ClientClosed,
    ProxyError,
    UpstreamClosed,
    UpstreamConnectRefused,
    UpstreamConnectTimeout,
    UpstreamUnreachable,
)
from proxy.metrics import TLS_DISABLED, Metrics, TcpConnection

__all__ = ["RECEIVE_SIZE", "Conn", "connect", "format_address"]

# Big enough that a busy connection needs few reads, small enough to bound per-connection memory.
RECEIVE_SIZE: Final = 65536
_YIELD_EVERY: Final = 16
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Conn:
    """One TCP connection, counted, with errors translated to the side it faces."""

    __slots__ = (
        "_emptied",
        "_error",
        "_fd",
        "_metrics",
        "_streak",
        "peer_id",
        "stats",
        "stream",
        "tls_labels",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        metrics: Metrics,
        stats: TcpConnection,
        *,
        upstream: bool,
        tls_labels: str = TLS_DISABLED,
        peer_id: str | None = None,
    ) -> None:
        self.stream = stream
        self.tls_labels = tls_labels
        """The TLS part of this connection's metric labels (``proxy.mtls.TlsLabels`` text)."""
        self.peer_id = peer_id
        """The identity the peer proved over mutual TLS; ``None`` for plaintext."""
        self._fd = stream.socket.fileno()
        self._streak = 0  # reads in a row that found bytes without waiting
        self._emptied = False  # the last read emptied the socket: wait before the next one
        self.stats = stats
        self._metrics = metrics
        self._error: type[ProxyError] = UpstreamClosed if upstream else ClientClosed

    async def receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        """The next bytes, or ``b""`` at end of stream.

        Like ``send``, a read(2) straight from the non-blocking socket first; only when nothing
        is there does the task wait for readiness in trio. But when the last read took less
        than it asked for, the socket was emptied and the next bytes are rarely there yet (the
        peer's next request or response): the task then waits for readiness first, sparing the
        read(2) that would fail with EAGAIN. A connection that always has bytes waiting still
        yields to the others every ``_YIELD_EVERY`` reads.
        """
        data = await self._read(max_bytes)
        self.stats.read += len(data)
        return data

    async def receive_answer(self) -> bytes:
        """``receive`` for what the peer sends in answer to what we just sent it (the next
        request after a response, a response after a request): it cannot be there yet, so wait
        for readiness first instead of a read(2) that fails with EAGAIN (two system calls per
        request saved)."""
        self._emptied = True
        return await self.receive()

    async def _read(self, max_bytes: int) -> bytes:
        """The socket's next bytes (``b""`` at end of stream), errors translated, not counted."""
        try:
            # Never wait on a closed connection's -1: trio would keep this task registered for
            # that "fd" (its epoll_ctl fails after the registration), and the next closed
            # connection's wait would raise BusyResourceError. The read names the failure.
            if self._emptied and self._fd >= 0:
                with contextlib.suppress(OSError, ValueError, trio.ClosedResourceError):
                    await trio.lowlevel.wait_readable(self._fd)  # the read names any failure
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                self._streak = 0
                await trio.lowlevel.wait_readable(self._fd)
                data = os.read(self._fd, max_bytes)
            else:
                self._streak += 1
                if self._streak >= _YIELD_EVERY and not self._emptied:
                    self._streak = 0
                    await trio.lowlevel.checkpoint()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._error(f"receive failed: {_describe(exc)}") from exc
        self._emptied = len(data) < max_bytes
        return data

    async def send(self, data: bytes) -> None:
        """Write all of ``data``; returns once the kernel has it."""
        await self._write(data)
        self.stats.written += len(data)

    def send_some(self, data: bytes | bytearray) -> int:
        """As much of ``data`` as the socket takes now, without waiting; 0 on any failure (the
        next ``send`` names it)."""
        try:
            sent = os.write(self._fd, data)
        except OSError:
            return 0
        self.stats.written += sent
        return sent

    def send_nowait(self, data: bytes) -> None:
        """Best effort, no waiting: what fits in the socket buffer now (for a last frame on a
        connection about to be closed); anything else is dropped."""
        with contextlib.suppress(OSError):
            os.write(self._fd, data)

    async def _write(self, data: bytes | memoryview) -> None:
        # Fast path: one write(2) straight to the non-blocking socket. Almost every write fits
        # in the socket buffer, and skipping trio's send_all saves two scheduler passes per
        # write (a quarter of the proxy's CPU per request in profiles). Trio takes over only
        # when the buffer is full.
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._error(f"send failed: {_describe(exc)}") from exc
        if sent < len(data):
            try:
                await self.stream.send_all(memoryview(data)[sent:])
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._error(f"send failed: {_describe(exc)}") from exc

    async def send_eof(self) -> None:
        """Half-close: the peer reads end-of-stream, and can still send to us."""
        try:
            await self.stream.send_eof()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._error(f"shutdown failed: {_describe(exc)}") from exc

    def readable_now(self) -> bool:
        """Whether bytes or end-of-stream are waiting (no blocking, nothing consumed).

        An idle keep-alive connection that is readable was closed by its server (or carries
        bytes nobody asked for): either way it must not take the next request.
        """
        # poll(2), not select(2): select refuses descriptors from 1024 up, and a busy proxy has
        # them; every idle connection would then look closed and never be reused.
        poller = select.poll()
        try:
            poller.register(self._fd, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):  # a closed connection (-1)
            return True

    def abort(self) -> None:
        """Close with a TCP reset, so the peer learns the exchange failed (not a clean end)."""
        with contextlib.suppress(OSError):  # already closed: nothing to reset
            self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.close()

    def close(self, error: str = "") -> None:
        """Close now (no await: closing a socket does not block) and record it once."""
        # Forget the descriptor first: the kernel reuses its number for the next socket, and a
        # late read or write here must fail (EBADF), never reach another connection.
        self._fd = -1
        self.stream.socket.close()
        self._metrics.tcp_close(self.stats, error)


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, OSError) and cause.errno is not None:
        return f"{errno.errorcode.get(cause.errno, cause.errno)} {cause.strerror}"
    return str(exc) or type(exc).__name__


async def connect(
    address: tuple[str, int],
    *,
    timeout: float,
    metrics: Metrics,
    direction: str,
    tls_labels: str = TLS_DISABLED,
) -> Conn:
    """Connect to ``address`` (an IP literal and port) within ``timeout`` seconds (plaintext;
    ``tls_labels`` says why, for the metrics)."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        with trio.fail_after(timeout):
            await sock.connect((host, port))
    except trio.TooSlowError:
        sock.close()
        raise UpstreamConnectTimeout(
            f"connecting to {format_address(address)} took longer than {timeout:g}s"
        ) from None
    except OSError as exc:
        sock.close()
        where = format_address(address)
        if exc.errno == errno.ECONNREFUSED:
            raise UpstreamConnectRefused(f"{where} refused the connection") from exc
        raise UpstreamUnreachable(f"connecting to {where} failed: {_describe(exc)}") from exc
    except BaseException:
        sock.close()
        raise
    stats = metrics.tcp_open(direction, "dst", format_address(address), tls=tls_labels)
    return Conn(trio.SocketStream(sock), metrics, stats, upstream=True, tls_labels=tls_labels)
