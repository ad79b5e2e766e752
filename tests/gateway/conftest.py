"""Fixtures for the HTTP/1-over-HTTP/2 gateway: a real HTTP/1 app, a real server proxy with
identity, and an ``h2`` client reaching the proxy's own port the way a client proxy does
(``MeshTls.connect_endpoint(..., session=Session.HTTP1_OVER_H2)``: mTLS + transport header).

The app (trio + h11, on loopback) records every request it receives (method, target, headers,
body length and SHA-256) and every connection; its paths choose the response's shape.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import pytest
import trio

from proxy.mtls.transport import Session
from proxy.net import Conn
from tests.mesh_tls import conftest as mesh_tls_fixtures
from tests.mesh_tls.conftest import (
    DB,
    WEB,
    IdentityService,
    MeshProxy,
    StartMeshProxy,
    free_port,
)

__all__ = ["App", "Gateway", "H2Client", "Received", "Response"]

# The mesh_tls fixtures this directory uses (pytest finds fixtures among a conftest's names).
pki = mesh_tls_fixtures.pki
identity_service = mesh_tls_fixtures.identity_service
start_mesh_proxy = mesh_tls_fixtures.start_mesh_proxy

BIG = 8 * 1024 * 1024
_PIECE = 65536
_READ = 1 << 20
_APP_RECEIVE_BUFFER = 65536


def big_body() -> bytes:
    return bytes(range(256)) * (BIG // 256)


@dataclass
class Received:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    length: int
    sha256: str

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


@dataclass
class App:
    """An HTTP/1 application on loopback that records what reaches it."""

    port: int = 0
    connections: int = 0
    requests: list[Received] = field(default_factory=list)
    drip_closed: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        served = 0
        async with stream:
            while True:
                request, received = await self._request(stream, conn)
                if request is None or received is None:
                    return
                self.requests.append(received)
                served += 1
                if received.target == "/dies-on-reuse" and served > 1:
                    return  # closed unanswered: what a keep-alive timeout racing a request does
                if not await self._respond(stream, conn, request, received):
                    return
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()

    async def _request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> tuple[h11.Request | None, Received | None]:
        request = None
        digest = hashlib.sha256()
        length = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if request is not None and request.target == b"/hold":
                    await self.release.wait()  # the body stays unread until the test says
                try:
                    conn.receive_data(await stream.receive_some(_PIECE))
                except trio.BrokenResourceError:
                    return None, None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                digest.update(event.data)
                length += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = [(bytes(n).decode(), bytes(v).decode()) for n, v in request.headers]
                received = Received(
                    request.method.decode(),
                    request.target.decode(),
                    request.http_version.decode(),
                    headers,
                    length,
                    digest.hexdigest(),
                )
                return request, received
            else:  # ConnectionClosed, PAUSED
                return None, None

    async def _respond(  # noqa: PLR0911 (one branch per path)
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, got: Received
    ) -> bool:
        """Answer; False when the connection must end."""
        path = got.target.split("?")[0]
        if path == "/close":  # no length, no chunks: delimited by closing
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
            return False
        if path == "/switch":
            await stream.send_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n"
            )
            return False
        if path == "/204":
            await _send(stream, conn, h11.Response(status_code=204, headers=[]))
            await _send(stream, conn, h11.EndOfMessage())
            return True
        if path == "/304":
            await _send(stream, conn, h11.Response(status_code=304, headers=[("etag", '"v1"')]))
            await _send(stream, conn, h11.EndOfMessage())
            return True
        if path == "/chunked":
            headers = [("transfer-encoding", "chunked"), ("x-shape", "chunked")]
            await _send(stream, conn, h11.Response(status_code=200, headers=headers))
            for piece in (b"one,", b"two,", b"three"):
                await _send(stream, conn, h11.Data(data=piece))
                await trio.sleep(0.01)
            await _send(stream, conn, h11.EndOfMessage())
            return True
        if path == "/big":
            body = big_body()
            headers = [("content-length", str(len(body)))]
            await _send(stream, conn, h11.Response(status_code=200, headers=headers))
            for start in range(0, len(body), _PIECE):
                await _send(stream, conn, h11.Data(data=body[start : start + _PIECE]))
            await _send(stream, conn, h11.EndOfMessage())
            return True
        if path == "/drip":
            return await self._drip(stream, conn)
        if path == "/continue":
            await _send(stream, conn, h11.InformationalResponse(status_code=100, headers=[]))
        if path == "/slow":
            await trio.sleep(0.2)
        body = json.dumps(
            {"method": got.method, "length": got.length, "sha256": got.sha256}
        ).encode()
        headers = [("content-length", str(len(body))), ("content-type", "application/json")]
        await _send(stream, conn, h11.Response(status_code=200, headers=headers))
        if request.method != b"HEAD":
            await _send(stream, conn, h11.Data(data=body))
        await _send(stream, conn, h11.EndOfMessage())
        return True

    async def _drip(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """A body that never ends (1 KiB every 10 ms) until the connection breaks."""
        headers = [("content-length", str(1 << 30))]
        try:
            await _send(stream, conn, h11.Response(status_code=200, headers=headers))
            while True:
                await _send(stream, conn, h11.Data(data=b"x" * 1024))
                await trio.sleep(0.01)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.drip_closed.set()
        return False


async def _send(stream: trio.SocketStream, conn: h11.Connection, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


@pytest.fixture
async def app(nursery: trio.Nursery) -> App:
    recorder = App()
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, recorder.handle, 0, host="127.0.0.1")
    )
    # A small fixed receive buffer (inherited by accepted sockets): bytes the app does not read
    # back up to the proxy soon (the request-body flow-control test).
    listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _APP_RECEIVE_BUFFER)
    recorder.port = listeners[0].socket.getsockname()[1]
    return recorder


@dataclass
class Response:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])


class H2Client:
    """An HTTP/2 client (``h2``) on one meshed connection, driven by one task."""

    def __init__(self, conn: Conn, *, ack_delay: float = 0.0) -> None:
        self.conn = conn
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.responses: dict[int, Response] = {}
        self.ack_delay = ack_delay
        self.unacked: list[tuple[int, int]] = []  # (flow-controlled bytes, stream id)
        self.eof = False
        self.sent = 0  # request body bytes sent
        self.goaway: int | None = None  # the last stream id of the proxy's GOAWAY

    async def start(self) -> None:
        self.h2.initiate_connection()
        await self._send()

    async def _send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.conn.send(data)

    async def request(
        self,
        method: bytes,
        path: bytes,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: list[bytes] | None = None,
        orig_proto: bytes | None = b"HTTP/1.1",
        authority: bytes = b"app.shop",
    ) -> int:
        """Open a stream (its body sent within the flow-control windows); its id."""
        sid = self.h2.get_next_available_stream_id()
        fields = [
            (b":method", method),
            (b":scheme", b"http"),
            (b":authority", authority),
            (b":path", path),
        ]
        if orig_proto is not None:
            fields.append((b"meshlet-orig-proto", orig_proto))
        fields += headers or []
        self.responses[sid] = Response()
        self.h2.send_headers(sid, fields, end_stream=not body)
        await self._send()
        for index, piece in enumerate(body or []):
            await self._send_data(sid, piece, end=index == len(body or []) - 1)
        return sid

    async def _send_data(self, sid: int, piece: bytes, *, end: bool) -> None:
        view = memoryview(piece)
        while True:
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window <= 0:
                await self.read_once()
                continue
            chunk, view = view[:window], view[window:]
            self.h2.send_data(sid, bytes(chunk), end_stream=end and not view)
            self.sent += len(chunk)
            await self._send()
            if not view:
                return

    async def read_once(self) -> None:
        data = await self.conn.receive(_READ)  # more than a window: a sender's excess shows
        if not data:
            self.eof = True
            return
        for event in self.h2.receive_data(data):
            await self._event(event)
        # A slow reader acknowledges only once nothing more may come, and after a pause in
        # which a sender ignoring the windows would send on (``h2`` then fails the connection).
        exhausted = any(
            self.h2.remote_flow_control_window(sid) == 0
            for _, sid in self.unacked
            if not self.responses[sid].ended
        )
        if self.ack_delay and exhausted:
            await trio.sleep(self.ack_delay)
        if not self.ack_delay or exhausted:
            for flow, sid in self.unacked:
                self.h2.acknowledge_received_data(flow, sid)
            self.unacked.clear()
        await self._send()

    async def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.responses[event.stream_id].headers = {
                bytes(n): bytes(v) for n, v in event.headers or []
            }
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            assert event.data is not None
            self.responses[event.stream_id].data += event.data
            self.unacked.append((event.flow_controlled_length, event.stream_id))
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            self.responses[event.stream_id].ended = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event.last_stream_id
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            response = self.responses.get(event.stream_id)
            if response is not None:
                response.reset = int(event.error_code or 0)

    async def wait(self, *sids: int) -> list[Response]:
        with trio.fail_after(20):
            while not all(
                self.responses[s].ended or self.responses[s].reset is not None for s in sids
            ):
                assert not self.eof, "the proxy closed the connection"
                await self.read_once()
        return [self.responses[s] for s in sids]

    async def get(self, path: bytes, **kwargs: Any) -> Response:
        sid = await self.request(b"GET", path, **kwargs)
        (response,) = await self.wait(sid)
        return response

    async def reset(self, sid: int) -> None:
        self.h2.reset_stream(sid)
        await self._send()

    def close(self) -> None:
        self.conn.close()


@dataclass
class Gateway:
    """A server proxy (identity ``DB``) and a way to reach its gateway as a peer proxy would."""

    server: MeshProxy
    client: MeshProxy
    proxy_port: int

    async def connect(self, app_port: int, **kwargs: Any) -> H2Client:
        conn = await self.client.mesh.connect_endpoint(
            ("127.0.0.1", app_port),
            DB,
            timeout=5.0,
            metrics=self.client.context.metrics,
            direction="outbound",
            session=Session.HTTP1_OVER_H2,
        )
        h2client = H2Client(conn, **kwargs)
        await h2client.start()
        return h2client


async def start_gateway(
    identity: IdentityService, start: StartMeshProxy, **overrides: Any
) -> Gateway:
    """The server proxy (``DB``, ``overrides`` its settings) and a client proxy (``WEB``)."""
    proxy_port = free_port()
    server = await start(
        ("127.0.0.1", proxy_port), identity.variables(DB), inbound_port=proxy_port, **overrides
    )
    client = await start(("127.0.0.1", 9), identity.variables(WEB), peer_proxy_port=proxy_port)
    await server.wait_ready()
    await client.wait_ready()
    return Gateway(server, client, proxy_port)


@pytest.fixture
async def gateway(identity_service: IdentityService, start_mesh_proxy: StartMeshProxy) -> Gateway:
    return await start_gateway(identity_service, start_mesh_proxy)


@pytest.fixture
async def patient_gateway(
    identity_service: IdentityService, start_mesh_proxy: StartMeshProxy
) -> Gateway:
    """A gateway whose idle application connections stay fit for a minute: tests of reuse do
    not depend on how fast a loaded machine runs them (the default idle timeout is 1 s)."""
    return await start_gateway(identity_service, start_mesh_proxy, http1_pool_idle_timeout=60.0)


def body_of(response: Response) -> Mapping[str, Any]:
    result: Mapping[str, Any] = json.loads(bytes(response.data))
    return result
