"""In-process HTTP/2 (h2c prior knowledge) backends for the per-stream mesh tests (the ``h2``
library as server, on Trio), each on its own 127.0.0.x address.

Paths: ``/`` answers the backend's name (after ``delay``; ``fail_status`` instead when set);
``/echo`` returns the request body with a trailer ``x-body-bytes``; ``/big`` answers
``big_bytes`` bytes; ``/grpc`` answers 200 with
trailers ``grpc-status: 0``; ``/reset`` resets the stream (``RST_STREAM`` CANCEL) without an
answer; ``/slow`` waits ``slow_seconds``, ``/timeout`` one second. ``refuse_next`` refuses
that many streams with RST_STREAM REFUSED_STREAM; ``goaway_after`` sends GOAWAY (last stream =
the current one) after that many requests on a connection. ``hits`` counts requests by path.
Answers to ``/`` carry the request's ``meshlet-client-id`` as ``x-client-id``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

from tests.mesh_outbound.mo_served import ServedBackend

__all__ = ["H2Backend"]


@dataclass
class H2Backend(ServedBackend):
    refuse_next: int = 0
    goaway_after: int = 0
    connections: int = 0
    big_bytes: int = 1 << 20

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        lock = trio.Lock()
        bodies: dict[int, bytearray] = {}
        paths: dict[int, str] = {}
        clients: dict[int, bytes] = {}
        served = 0
        goaway = bytearray()  # sent raw: h2 would stop serving the streams still in flight

        async def flush() -> None:
            async with lock:
                data = conn.data_to_send() + bytes(goaway)
                goaway.clear()
                if data:
                    await stream.send_all(data)

        async def answer(stream_id: int) -> None:
            path = paths.pop(stream_id, "/")
            body = bytes(bodies.pop(stream_id, b""))
            client_id = clients.pop(stream_id, b"")
            try:
                await self._answer(conn, stream_id, path, body, flush, client_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return
            await flush()

        try:
            async with trio.open_nursery() as nursery:
                await flush()
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            headers = dict(event.headers)
                            path = headers[b":path"].decode()
                            if self.refuse_next > 0:
                                self.refuse_next -= 1
                                conn.reset_stream(event.stream_id, 0x7)
                                continue
                            self.hits[path] += 1
                            served += 1
                            paths[event.stream_id] = path
                            clients[event.stream_id] = headers.get(b"meshlet-client-id", b"")
                            bodies[event.stream_id] = bytearray()
                            if self.goaway_after and served == self.goaway_after:
                                last = event.stream_id.to_bytes(4, "big")
                                goaway += b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + last
                                goaway += bytes(4)
                        elif isinstance(event, h2.events.DataReceived):
                            if event.stream_id in bodies:
                                bodies[event.stream_id] += event.data
                            conn.acknowledge_received_data(
                                event.flow_controlled_length, event.stream_id
                            )
                        elif isinstance(event, h2.events.StreamEnded) and event.stream_id in paths:
                            nursery.start_soon(answer, event.stream_id)
                    await flush()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, h2.exceptions.ProtocolError, OSError):
            pass
        finally:
            await stream.aclose()

    async def _answer(  # noqa: PLR0917 - the stream's state, passed on
        self,
        conn: h2.connection.H2Connection,
        stream_id: int,
        path: str,
        body: bytes,
        flush: Callable[[], Awaitable[None]],
        client_id: bytes = b"",
    ) -> None:
        if path == "/reset":
            conn.reset_stream(stream_id, 0x8)
            return
        if path == "/slow":
            await trio.sleep(self.slow_seconds)
        elif path == "/timeout":
            await trio.sleep(1.0)
        elif self.delay:
            await trio.sleep(self.delay)
        if path == "/big":
            body = b"b" * self.big_bytes
        if path in {"/echo", "/big"}:
            conn.send_headers(stream_id, [(b":status", b"200")])
            view = memoryview(body)
            while view:  # as the proxy's windows allow
                window = min(conn.local_flow_control_window(stream_id), 16384)
                if window <= 0:
                    await flush()
                    await trio.sleep(0.005)
                    continue
                conn.send_data(stream_id, bytes(view[:window]))
                view = view[window:]
            conn.send_headers(stream_id, [(b"x-body-bytes", str(len(body)).encode())], True)
            return
        if path == "/grpc":
            conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"grpc")])
            conn.send_data(stream_id, b"\x00\x00\x00\x00\x00")
            conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
            return
        status = self.fail_status if self.fail_status and path != "/slow" else 200
        text = f"{self.name}\n".encode()
        head = [(b":status", str(status).encode()), (b"x-client-id", client_id)]
        conn.send_headers(stream_id, head)
        conn.send_data(stream_id, text, end_stream=True)
