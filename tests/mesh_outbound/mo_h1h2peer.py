"""A stand-in for a meshed server proxy, for the outbound HTTP/1 upgrade tests: two mTLS
listeners proving the server identity (certificates from a real ``meshlet-identity``).

- the *proxy port*: reads the transport header, then serves HTTP/2 with the ``h2`` library and
  records every stream (fields, body, whether END_STREAM came with the HEADERS, a reset);
- the *application port* (the endpoint's own port, where plain HTTP/1 from the client proxy
  lands): records each HTTP/1 request head and answers ``200 plain``.

HTTP/2 answers by ``:path``: ``/`` ``hello`` with a content-length; ``/nolength`` 300 000 bytes
without one (more than a stream window); ``/echo`` the body's length and sha256; ``/slow`` that
after 0.3 s; ``/fail-once`` 503 the first time, then as ``/echo``; ``/stall`` never; ``/reset`` a
RST_STREAM INTERNAL_ERROR; ``/reset-mid`` a head and ``partial``, then RST_STREAM INTERNAL_ERROR;
``/break`` a head and ``partial``, then the connection ends; ``/data-first`` DATA with END_STREAM
and no head at all (a protocol error); ``/204`` and ``/304`` those statuses without a body (the
304 with ``content-length: 5``); ``/early`` 413 ``too large`` as soon as the HEADERS arrive,
before the request body. ``HEAD`` gets the content-length of ``hello`` and no body.
``refuse`` counts the streams to answer with RST_STREAM REFUSED_STREAM first, ``goaway`` those
to answer with a GOAWAY whose last stream id is below theirs (never processed).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio

from proxy.identity import IdentityClient
from proxy.mtls import MtlsSettings, accept_meshed
from proxy.mtls.transport import TransportHeader, read_transport_header

NOLENGTH_BYTES = 300_000
_FAILING = frozenset({b"/reset", b"/reset-mid", b"/data-first", b"/break"})


@dataclasses.dataclass
class PeerStream:
    headers: list[tuple[bytes, bytes]]
    end_on_headers: bool
    body: bytearray = dataclasses.field(default_factory=bytearray)
    refused: bool = False
    answered: bool = False  # answered before its end (``/early``)
    reset: int | None = None  # the client's RST_STREAM code

    def field(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def names(self) -> list[bytes]:
        return [n for n, _ in self.headers]


class H1H2Peer:
    def __init__(self, identity: IdentityClient) -> None:
        self.identity = identity
        self.connections = 0
        self.transport: list[TransportHeader] = []
        self.streams: list[PeerStream] = []
        self.plain: list[bytes] = []
        self.refuse = 0
        self.goaway = 0
        self.failed_once = False
        self.port = 0
        self.plain_port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
            listeners = await nursery.start(serve, self._h2, 0)
            self.port = listeners[0].socket.getsockname()[1]
            listeners = await nursery.start(serve, self._plain, 0)
            self.plain_port = listeners[0].socket.getsockname()[1]
            task_status.started()

    async def _accept(self, stream: trio.SocketStream) -> Any:
        meshed = await accept_meshed(stream, b"", self.identity, settings=MtlsSettings())
        return meshed.stream

    async def _plain(self, stream: trio.SocketStream) -> None:
        tls = await self._accept(stream)
        async with tls:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await tls.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            self.plain.append(data.split(b"\r\n\r\n", 1)[0])
            await tls.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nplain"
            )

    async def _h2(self, stream: trio.SocketStream) -> None:
        tls = await self._accept(stream)
        header, data = await read_transport_header(tls.receive_some, b"", timeout=5)
        self.transport.append(header)
        self.connections += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        lock = trio.Lock()
        pending: dict[int, bytes] = {}
        mine: dict[int, PeerStream] = {}

        async def flush(*, hangup: bool = False) -> None:
            self._push(conn, pending)
            async with lock:
                out = conn.data_to_send()
                if out:
                    await tls.send_all(out)
                if hangup:
                    await tls.aclose()

        async with tls, trio.open_nursery() as nursery:
            await flush()
            while True:
                if not data:
                    try:
                        data = await tls.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:  # frames after our GOAWAY
                    break
                for event in events:
                    self._event(conn, event, mine, nursery, pending, flush)
                data = b""
                await flush()
            nursery.cancel_scope.cancel()

    def _event(  # noqa: PLR0917
        self,
        conn: h2.connection.H2Connection,
        event: h2.events.Event,
        mine: dict[int, PeerStream],
        nursery: trio.Nursery,
        pending: dict[int, bytes],
        flush: Any,
    ) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            record = PeerStream(
                [(bytes(n), bytes(v)) for n, v in event.headers or []],
                event.stream_ended is not None,
            )
            self.streams.append(record)
            mine[event.stream_id] = record
            if self.refuse:
                self.refuse -= 1
                record.refused = True
                conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            if self.goaway:
                self.goaway -= 1
                record.refused = True
                conn.close_connection(last_stream_id=max(event.stream_id - 2, 0))
                return
            if record.field(b":path") == b"/early":  # before the body: 413 at once
                body = b"too large"
                length = str(len(body)).encode()
                conn.send_headers(
                    event.stream_id, [(b":status", b"413"), (b"content-length", length)]
                )
                conn.send_data(event.stream_id, body, end_stream=True)
                record.answered = True
                return
            if event.stream_ended is not None:
                nursery.start_soon(self._answer, conn, event.stream_id, record, pending, flush)
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            assert event.data is not None
            record = mine[event.stream_id]
            record.body += event.data
            conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            mine[event.stream_id].reset = event.error_code
            pending.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            record = mine[event.stream_id]
            answer = record.body or not record.end_on_headers
            if answer and not (record.refused or record.answered):
                nursery.start_soon(self._answer, conn, event.stream_id, record, pending, flush)

    async def _answer(
        self,
        conn: h2.connection.H2Connection,
        stream_id: int,
        record: PeerStream,
        pending: dict[int, bytes],
        flush: Any,
    ) -> None:
        path = (record.field(b":path") or b"").split(b"?", 1)[0]
        headers = [(b":status", b"200")]
        body = b"hello"
        if path == b"/slow":
            await trio.sleep(0.3)
        elif path == b"/stall":
            await trio.sleep_forever()
        elif path in _FAILING:
            await self._fail(conn, stream_id, path, flush)
            return
        elif path in {b"/204", b"/304"}:  # no body; a 304 with its representation's length
            length = [(b"content-length", b"5")] if path == b"/304" else []
            conn.send_headers(stream_id, [(b":status", path[1:]), *length], end_stream=True)
            await flush()
            return
        elif path == b"/fail-once":
            path = b"/echo"
            if not self.failed_once:
                self.failed_once = True
                headers = [(b":status", b"503")]
        if path == b"/nolength":
            body = bytes(range(256)) * (NOLENGTH_BYTES // 256) + b"x" * (NOLENGTH_BYTES % 256)
        else:
            if path == b"/echo":
                digest = hashlib.sha256(record.body).hexdigest()
                body = f"{len(record.body)} {digest}".encode()
            headers.append((b"content-length", str(len(body)).encode()))
        if record.field(b":method") == b"HEAD":
            body = b""
        conn.send_headers(stream_id, headers, end_stream=not body)
        if body:
            pending[stream_id] = body
        await flush()

    @staticmethod
    async def _fail(
        conn: h2.connection.H2Connection, stream_id: int, path: bytes, flush: Any
    ) -> None:
        """The answers that go wrong (``_FAILING``)."""
        if path in {b"/reset-mid", b"/break"}:  # a head and some body first
            conn.send_headers(stream_id, [(b":status", b"200")], end_stream=False)
            conn.send_data(stream_id, b"partial", end_stream=False)
        if path in {b"/reset", b"/reset-mid"}:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif path == b"/data-first":  # DATA and the end, never a head
            conn.send_data(stream_id, b"oops", end_stream=True)
        await flush(hangup=path == b"/break")

    @staticmethod
    def _push(conn: h2.connection.H2Connection, pending: dict[int, bytes]) -> None:
        """Send what the windows allow of each pending response body."""
        for stream_id, queued in list(pending.items()):
            body = queued
            while body:
                size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if size <= 0:
                    break
                conn.send_data(stream_id, body[:size], end_stream=len(body) <= size)
                body = body[size:]
            if body:
                pending[stream_id] = body
            else:
                del pending[stream_id]
