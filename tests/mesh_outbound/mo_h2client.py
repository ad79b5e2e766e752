"""A small HTTP/2 client for the tests (the ``h2`` library on Trio): ONE connection, many
requests on it, concurrently if asked; every answer with its status, headers, body, trailers
or reset code."""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import trio

__all__ = ["H2Answer", "H2Client"]


@dataclass
class H2Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    reset: int | None = None
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def text(self) -> str:
        return bytes(self.body).decode(errors="replace").strip()


class H2Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.answers: dict[int, H2Answer] = {}
        self.window_open = trio.Event()
        self.closed = False
        self.lock = trio.Lock()
        self._pending = bytearray()
        self.goaway: int | None = None  # the last stream id of a GOAWAY received

    @classmethod
    async def connect(cls, nursery: trio.Nursery, port: int) -> H2Client:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        client.conn.initiate_connection()
        await client.flush()
        nursery.start_soon(client._read)
        return client

    async def flush(self) -> None:
        async with self.lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def _read(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                break
            for event in self.conn.receive_data(self._without_goaway(data)):
                answer = self.answers.get(getattr(event, "stream_id", 0))
                if isinstance(event, h2.events.ResponseReceived) and answer is not None:
                    answer.headers = dict(event.headers)
                    answer.status = int(answer.headers[b":status"])
                elif isinstance(event, h2.events.DataReceived) and answer is not None:
                    answer.body += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.TrailersReceived) and answer is not None:
                    answer.trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded) and answer is not None:
                    answer.done.set()
                elif isinstance(event, h2.events.StreamReset) and answer is not None:
                    answer.reset = event.error_code
                    answer.done.set()
                elif isinstance(event, h2.events.WindowUpdated):
                    self.window_open.set()  # wakes every waiting request
                    self.window_open = trio.Event()
            await self.flush()
        self.closed = True
        for answer in self.answers.values():
            answer.done.set()

    def _without_goaway(self, data: bytes) -> bytes:
        """``data`` minus GOAWAY frames, which are only recorded (``goaway``): after one, h2
        refuses every frame, also those of the streams the GOAWAY lets finish."""
        self._pending += data
        out = bytearray()
        while len(self._pending) >= 9:
            end = 9 + int.from_bytes(self._pending[:3], "big")
            if len(self._pending) < end:
                break
            frame = bytes(self._pending[:end])
            del self._pending[:end]
            if frame[3] == 0x7:
                self.goaway = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
            else:
                out += frame
        return bytes(out)

    async def request(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        body: bytes = b"",
        authority: str = "web.shop.svc.cluster.local:8080",
        timeout: float = 10,
    ) -> H2Answer:
        stream_id = self.conn.get_next_available_stream_id()
        answer = self.answers[stream_id] = H2Answer()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        await self.flush()
        view = memoryview(body)
        with trio.fail_after(timeout):
            while view:
                window = min(self.conn.local_flow_control_window(stream_id), 16384)
                if window <= 0:
                    await self.window_open.wait()
                    continue
                chunk, view = view[:window], view[window:]
                self.conn.send_data(stream_id, bytes(chunk), end_stream=not view)
                await self.flush()
            await answer.done.wait()
        return answer

    async def aclose(self) -> None:
        await self.stream.aclose()
