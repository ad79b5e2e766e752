"""Edge cases of the HTTP/1-over-HTTP/2 gateway through a real server proxy: applications that
answer early, close connections the request did not keep alive, and header shapes HTTP/2 allows
but HTTP/1 does not."""

from __future__ import annotations

import functools
import re
import socket
import struct
from collections.abc import Awaitable, Callable

import h2.errors
import h2.exceptions
import pytest
import trio

from proxy.h1gatewaystream import MAX_IDLE_APP_CONNECTIONS
from proxy.h1h2convert import RejectedStream, stream_request
from tests.mesh_tls.conftest import IdentityService, StartMeshProxy

from .conftest import App, Gateway, H2Client, Response, body_of, start_gateway

Handler = Callable[[trio.SocketStream], Awaitable[None]]
UPLOAD = 16 * 1024 * 1024
REFUSAL = b"too big\n" * 32768  # more than the client's stream window: still in flight
BASE = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"app.shop"),
    (b":path", b"/"),
    (b"meshlet-orig-proto", b"HTTP/1.1"),
]


async def _serve(nursery: trio.Nursery, handler: Handler) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _read_head(stream: trio.SocketStream, data: bytes = b"") -> tuple[bytes, bytes]:
    """One request head (and the bytes after it) off ``stream``."""
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some(65536)
        if not more:
            raise EOFError
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def _open(client: H2Client, method: bytes, path: bytes, length: int) -> int:
    """A stream whose body (``length`` bytes) is still to come; its id."""
    sid: int = client.h2.get_next_available_stream_id()
    fields = [*BASE[:3], (b":path", path), (b"meshlet-orig-proto", b"HTTP/1.1")]
    fields[0] = (b":method", method)
    fields.append((b"content-length", str(length).encode()))
    client.responses[sid] = Response()
    client.h2.send_headers(sid, fields, end_stream=False)
    await client._send()
    return sid


async def _upload(client: H2Client, sid: int, size: int) -> None:
    """``size`` bytes on ``sid`` within the windows, until sent or the stream is over."""
    piece = b"u" * 16384
    left = size
    response = client.responses[sid]
    while left and not response.ended and response.reset is None:
        try:
            window = min(client.h2.local_flow_control_window(sid), len(piece), left)
        except h2.exceptions.StreamClosedError:
            return
        if window <= 0:
            await client.read_once()
            continue
        left -= window
        client.h2.send_data(sid, piece[:window], end_stream=not left)
        await client._send()


@pytest.mark.trio
async def test_an_early_answer_from_an_app_that_closes_reaches_the_client(
    gateway: Gateway, nursery: trio.Nursery
) -> None:
    """An app refusing an upload answers at once (413, ``Connection: close``) and closes without
    reading the body: the client gets the app's answer, not a proxy error."""
    answered = trio.Event()

    async def refuse(stream: trio.SocketStream) -> None:
        async with stream:
            await _read_head(stream)
            await stream.send_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(REFUSAL), REFUSAL)
            )
            answered.set()

    port = await _serve(nursery, refuse)
    for _ in range(3):  # the race between the failed write and the answer, more than once
        client = await gateway.connect(port)
        try:
            sid = await _open(client, b"POST", b"/upload", UPLOAD)
            with trio.fail_after(20):
                await _upload(client, sid, UPLOAD)
            (response,) = await client.wait(sid)
        finally:
            client.close()
        assert response.status == 413, response
        assert bytes(response.data) == REFUSAL


@pytest.mark.trio
async def test_an_http10_request_does_not_leave_its_connection_for_the_next(
    gateway: Gateway, nursery: trio.Nursery
) -> None:
    """An HTTP/1.0 request without keep-alive ends its connection (RFC 9112 9.3) even when the
    app's answer does not say so (Python's ``http.server`` answers ``HTTP/1.1`` and closes):
    the next request must not be written to it."""
    connections: list[int] = []

    async def old_style(stream: trio.SocketStream) -> None:
        connections.append(1)
        async with stream:
            rest = b""
            while True:
                try:
                    head, rest = await _read_head(stream, rest)
                except (EOFError, trio.BrokenResourceError):
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += await stream.receive_some(65536)
                rest = rest[length:]
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                if head.endswith(b"HTTP/1.0") or b" HTTP/1.0\r\n" in head:
                    await trio.sleep(0.3)  # then closes, the request having asked for it
                    return

    port = await _serve(nursery, old_style)
    client = await gateway.connect(port)
    try:
        old = await client.get(b"/old", orig_proto=b"HTTP/1.0")
        assert old.status == 200
        sid = await client.request(
            b"POST", b"/new", headers=[(b"content-length", b"2")], body=[b"hi"]
        )
        (posted,) = await client.wait(sid)
    finally:
        client.close()
    assert posted.status == 200, posted
    assert bytes(posted.data) == b"ok"
    assert len(connections) == 2


def test_split_cookie_fields_reach_http1_as_one() -> None:
    """RFC 9113 8.2.3: HTTP/2 may split ``cookie`` into several fields; before HTTP/1.1 they
    are joined with ``; `` (an HTTP/1 server reads one Cookie field)."""
    headers = [*BASE, (b"cookie", b"a=1"), (b"x-other", b"o"), (b"cookie", b"b=2")]
    head = stream_request(headers, True, None).head
    assert head == (b"GET / HTTP/1.1\r\nhost: app.shop\r\ncookie: a=1; b=2\r\nx-other: o\r\n\r\n")


@pytest.mark.trio
async def test_a_reset_racing_a_body_longer_than_announced_ends_that_stream_only(
    app: App, gateway: Gateway
) -> None:
    """The peer sends more body than its ``content-length`` and resets the stream in the same
    write, while the request waits for the app's answer: that stream ends, and the connection
    with its other streams carries on (the two failures at once once escaped the stream's task
    and tore the connection down)."""
    client = await gateway.connect(app.port)
    try:
        slow = await client.request(b"GET", b"/slow")
        for _ in range(3):
            sid = await _open(client, b"POST", b"/echo", 2)
            await trio.sleep(0.1)  # the head is with the app, which waits for the body
            client.h2.send_data(sid, b"hello")
            client.h2.reset_stream(sid)
            await client._send()
        (slow_response,) = await client.wait(slow)
        assert slow_response.status == 200
        assert (await client.get(b"/echo")).status == 200
    finally:
        client.close()


@pytest.mark.parametrize("path", [b"http://elsewhere.example/a", b"a/b", b"*"])
def test_a_path_that_is_no_origin_form_target_is_rejected(path: bytes) -> None:
    """RFC 9113 8.3.1: ``:path`` is an absolute path (or ``*`` for ``OPTIONS``). An absolute URI
    would have the app take its authority over ``Host`` (RFC 9112 3.2.2), not the one the proxy
    saw in ``:authority``."""
    headers = [(b":path", path) if n == b":path" else (n, v) for n, v in BASE]
    with pytest.raises(RejectedStream, match=":path"):
        stream_request(headers, True, None)


def test_options_star_is_carried() -> None:
    headers = [
        (b":method", b"OPTIONS") if n == b":method" else (b":path", b"*") if n == b":path" else h
        for h in BASE
        for n in [h[0]]
    ]
    assert stream_request(headers, True, None).head.startswith(b"OPTIONS * HTTP/1.1\r\n")


@pytest.mark.trio
async def test_an_app_resetting_mid_response_resets_that_stream_only(
    gateway: Gateway, nursery: trio.Nursery
) -> None:
    """The head is out when the app's connection breaks: the stream is reset (INTERNAL_ERROR),
    counted as a failure, and the gateway connection serves the next request."""

    async def cut(stream: trio.SocketStream) -> None:
        head, _ = await _read_head(stream)
        if head.startswith(b"GET /cut "):
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000
            )
            await trio.sleep(0.1)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        stream.socket.close()

    port = await _serve(nursery, cut)
    client = await gateway.connect(port)
    try:
        sid = await client.request(b"GET", b"/cut")
        (response,) = await client.wait(sid)
        assert response.headers[b":status"] == b"200"
        assert response.reset == h2.errors.ErrorCodes.INTERNAL_ERROR
        assert len(response.data) < 100000
        assert (await client.get(b"/after")).status == 200
    finally:
        client.close()
    metrics = await gateway.server.metrics()
    assert re.search(
        r'response_total\{[^}]*status_code="200",classification="failure"\} 1', metrics
    )


@pytest.mark.trio
async def test_trailers_end_a_request_body_and_a_response_body(
    app: App, gateway: Gateway, nursery: trio.Nursery
) -> None:
    """Request trailers (HEADERS after DATA) end the body the app receives; a chunked response's
    trailers are dropped and the stream still ends (both ways the contract's "dropped")."""

    async def trailing(stream: trio.SocketStream) -> None:
        async with stream:
            await _read_head(stream)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n"
            )

    client = await gateway.connect(app.port)
    try:
        sid = client.h2.get_next_available_stream_id()
        client.responses[sid] = Response()
        client.h2.send_headers(sid, [(b":method", b"PUT"), *BASE[1:]], end_stream=False)
        client.h2.send_data(sid, b"part one,")
        client.h2.send_data(sid, b"part two")
        client.h2.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
        await client._send()
        (put,) = await client.wait(sid)
    finally:
        client.close()
    assert put.status == 200
    (received,) = app.requests
    assert received.length == len(b"part one,part two")
    assert received.header("x-checksum") == []
    port = await _serve(nursery, trailing)
    client = await gateway.connect(port)
    try:
        response = await client.get(b"/trailing")
    finally:
        client.close()
    assert (response.status, bytes(response.data), response.ended) == (200, b"hello", True)
    assert b"x-checksum" not in response.headers


@pytest.mark.trio
async def test_a_request_body_shorter_than_its_content_length_is_a_400(
    app: App, gateway: Gateway
) -> None:
    client = await gateway.connect(app.port)
    try:
        sid = await _open(client, b"POST", b"/echo", 10)
        client.h2.send_data(sid, b"short", end_stream=True)
        await client._send()
        (response,) = await client.wait(sid)
        assert response.status == 400
        assert response.headers[b"meshlet-proxy-error"] == b"malformed_request"
        assert (await client.get(b"/echo")).status == 200
    finally:
        client.close()
    assert [r.target for r in app.requests] == ["/echo"]  # the cut one never completed


@pytest.mark.trio
async def test_idle_app_connections_are_bounded_in_number(
    patient_gateway: Gateway, nursery: trio.Nursery
) -> None:
    """Twenty streams at once need twenty app connections (the app answers none before all
    twenty arrived); sixteen of them stay idle for the next twenty
    (``MAX_IDLE_APP_CONNECTIONS``), the rest are closed."""
    arrived = [0]
    connections = [0]
    wave = [trio.Event(), trio.Event()]

    async def barrier(stream: trio.SocketStream) -> None:
        connections[0] += 1
        rest = b""
        async with stream:
            while True:
                try:
                    _, rest = await _read_head(stream, rest)
                except (EOFError, trio.BrokenResourceError):
                    return
                arrived[0] += 1
                index = (arrived[0] - 1) // 20
                if arrived[0] % 20 == 0:
                    wave[index].set()
                await wave[index].wait()
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    port = await _serve(nursery, barrier)
    gateway = patient_gateway
    client = await gateway.connect(port)
    try:
        for _ in range(2):
            sids = [await client.request(b"GET", b"/wave") for _ in range(20)]
            assert [r.status for r in await client.wait(*sids)] == [200] * 20
    finally:
        client.close()
    assert connections[0] == 20 + 20 - MAX_IDLE_APP_CONNECTIONS


@pytest.mark.trio
async def test_an_app_connection_idle_past_the_pool_timeout_is_not_reused(
    app: App, identity_service: IdentityService, start_mesh_proxy: StartMeshProxy
) -> None:
    gateway = await start_gateway(identity_service, start_mesh_proxy, http1_pool_idle_timeout=1.0)
    client = await gateway.connect(app.port)
    try:
        assert (await client.get(b"/echo")).status == 200
        assert (await client.get(b"/echo")).status == 200  # at once: reused
        assert app.connections == 1
        await trio.sleep(1.5)
        assert (await client.get(b"/echo")).status == 200
    finally:
        client.close()
    assert app.connections == 2


@pytest.mark.trio
async def test_an_answer_before_a_trailing_end_stream_keeps_the_app_connection(
    app: App, patient_gateway: Gateway
) -> None:
    """The whole ``content-length`` body is written and answered before the stream's
    END_STREAM arrives (it may trail in a frame of its own): the app connection carried a
    complete exchange and is reused, not reset."""
    gateway = patient_gateway
    client = await gateway.connect(app.port)
    try:
        sid = await _open(client, b"POST", b"/echo", 5)
        client.h2.send_data(sid, b"hello")  # END_STREAM withheld
        await client._send()
        (response,) = await client.wait(sid)
        assert response.status == 200
        assert body_of(response)["length"] == 5
        assert (await client.get(b"/echo")).status == 200
    finally:
        client.close()
    assert app.connections == 1
