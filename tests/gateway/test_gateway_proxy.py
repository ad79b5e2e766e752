"""The HTTP/1-over-HTTP/2 gateway through a real server proxy: mTLS + transport header to its own
port, an ``h2`` client, a real HTTP/1 app recording what reaches it."""

from __future__ import annotations

import hashlib
import re

import pytest
import trio

from proxy.h2frames import PREFACE
from proxy.mtls.transport import Session
from proxy.policy import DefaultInboundPolicy
from proxy.tap import TapFilter, TapRequest, TapResponse
from tests.mesh_tls.conftest import DB, WEB, IdentityService, StartMeshProxy, free_port

from .conftest import BIG, App, Gateway, H2Client, Response, big_body, body_of, start_gateway

pytestmark = pytest.mark.trio

_DATA, _HEADERS, _PING, _GOAWAY = 0x0, 0x1, 0x6, 0x7
_END_STREAM, _END_HEADERS = 0x1, 0x4
UPLOAD = 16 * 1024 * 1024


async def test_get_and_post_reach_the_app_as_http1(app: App, gateway: Gateway) -> None:
    tapped = gateway.server.context.tap.subscribe(TapFilter(direction="inbound"))
    client = await gateway.connect(app.port)
    try:
        response = await client.get(
            b"/echo?q=1",
            headers=[(b"x-custom", b"yes"), (b"meshlet-client-id", b"spoofed.identity")],
        )
        assert response.status == 200, response
        assert body_of(response)["method"] == "GET"
        post = b"hello=world" * 100
        sid = await client.request(
            b"POST",
            b"/echo",
            headers=[(b"content-length", str(len(post)).encode())],
            body=[post[:500], post[500:]],
        )
        (posted,) = await client.wait(sid)
        assert posted.status == 200
        assert body_of(posted)["sha256"] == hashlib.sha256(post).hexdigest()
        old = await client.get(b"/echo", orig_proto=b"HTTP/1.0")
        assert old.status == 200
    finally:
        client.close()
    get, post_received, old_received = app.requests
    assert old_received.version == "1.0"
    assert (get.method, get.target, get.version) == ("GET", "/echo?q=1", "1.1")
    assert get.headers[0] == ("host", "app.shop")  # Host first, from :authority
    assert get.header("x-custom") == ["yes"]
    assert get.header("meshlet-client-id") == [WEB]  # the proven identity, never the spoofed one
    assert get.header("meshlet-orig-proto") == []
    assert post_received.header("content-length") == [str(len(post))]
    assert post_received.header("transfer-encoding") == []
    assert post_received.length == len(post)
    metrics = await gateway.server.metrics()
    labels = rf'direction="inbound",authority="app.shop",tls="true",client_id="{re.escape(WEB)}"'
    assert re.search(rf"request_total\{{{labels}\}} 3", metrics), metrics
    assert re.search(
        rf'response_total\{{{labels},status_code="200",classification="success"\}} 3', metrics
    ), metrics
    assert re.search(rf'response_latency_ms_count\{{{labels},status_code="200"\}} 3', metrics)
    events = tapped.take()
    requests = [e for e in events if isinstance(e, TapRequest)]
    assert [(e.method, e.path, e.tls, e.client_id) for e in requests] == [
        ("GET", "/echo?q=1", "true", WEB),
        ("POST", "/echo", "true", WEB),
        ("GET", "/echo", "true", WEB),
    ]
    assert [e.status for e in events if isinstance(e, TapResponse)] == [200, 200, 200]


async def test_a_chunked_upload_of_a_mebibyte_arrives_whole(app: App, gateway: Gateway) -> None:
    body = bytes(range(251)) * (1 << 20 // 251 + 10)  # > 1 MiB, no content-length
    pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
    client = await gateway.connect(app.port)
    try:
        sid = await client.request(b"PUT", b"/echo", body=pieces)
        (response,) = await client.wait(sid)
    finally:
        client.close()
    assert response.status == 200
    (received,) = app.requests
    assert received.header("transfer-encoding") == ["chunked"]
    assert (received.length, received.sha256) == (len(body), hashlib.sha256(body).hexdigest())


async def test_request_body_windows_return_only_as_the_app_reads(
    app: App, gateway: Gateway
) -> None:
    """An app that does not read the body holds the client back (the proxy returns a window
    only once it wrote the bytes); once it reads, the body arrives whole."""
    body = bytes(range(256)) * (UPLOAD // 256)
    client = await gateway.connect(app.port)
    response: list[Response] = []

    async def upload() -> None:
        sid = await client.request(
            b"POST", b"/hold", headers=[(b"content-length", str(len(body)).encode())], body=[body]
        )
        response.extend(await client.wait(sid))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            with trio.fail_after(20):  # until the upload stalls (or completes)
                sent = -1
                while client.sent != sent:
                    sent = client.sent
                    await trio.sleep(0.5)
            assert 0 < sent < len(body) // 2
            app.release.set()
    finally:
        client.close()
    assert response[0].status == 200
    (received,) = app.requests
    assert (received.length, received.sha256) == (len(body), hashlib.sha256(body).hexdigest())


async def test_response_shapes(app: App, patient_gateway: Gateway) -> None:
    client = await patient_gateway.connect(app.port)
    try:
        chunked = await client.get(b"/chunked")
        assert (chunked.status, bytes(chunked.data)) == (200, b"one,two,three")
        assert chunked.headers[b"x-shape"] == b"chunked"
        assert b"transfer-encoding" not in chunked.headers
        sized = await client.get(b"/echo")
        assert sized.headers[b"content-length"] == str(len(sized.data)).encode()
        connections = app.connections
        closed = await client.get(b"/close")
        assert (closed.status, bytes(closed.data)) == (200, b"until close")
        after = await client.get(b"/echo")  # the close-delimited connection is not reused
        assert after.status == 200
        assert app.connections == connections + 1
        head = await client.request(b"HEAD", b"/echo")
        (head_response,) = await client.wait(head)
        assert head_response.status == 200
        assert head_response.ended
        assert head_response.headers[b"content-length"] != b"0"
        assert bytes(head_response.data) == b""
        for path, status in ((b"/204", 204), (b"/304", 304)):
            response = await client.get(path)
            assert (response.status, bytes(response.data), response.ended) == (status, b"", True)
        informational = await client.get(b"/continue")  # the 100 is dropped
        assert informational.status == 200
        switched = await client.get(b"/switch")
        assert switched.status == 502
        assert switched.headers[b"meshlet-proxy-error"] == b"upstream_protocol_error"
        assert (await client.get(b"/echo")).status == 200  # the connection carries on
    finally:
        client.close()


async def test_concurrent_streams_share_keep_alive_app_connections(
    app: App, patient_gateway: Gateway
) -> None:
    gateway = patient_gateway
    client = await gateway.connect(app.port)
    try:
        for _ in range(3):
            sids = [await client.request(b"GET", b"/slow") for _ in range(5)]
            responses = await client.wait(*sids)
            assert [r.status for r in responses] == [200] * 5
    finally:
        client.close()
    assert len(app.requests) == 15
    assert app.connections <= 5  # each round reuses the previous round's connections


async def test_an_idempotent_request_meeting_a_dead_idle_connection_is_sent_again(
    app: App, patient_gateway: Gateway
) -> None:
    """The app closes a reused connection without answering (as a keep-alive timeout racing the
    request would): a GET goes once more on a new connection; a POST is a 502."""
    gateway = patient_gateway
    client = await gateway.connect(app.port)
    try:
        assert (await client.get(b"/echo")).status == 200  # a connection now idle in the pool
        replayed = await client.get(b"/dies-on-reuse")
        assert replayed.status == 200
        assert [r.target for r in app.requests] == ["/echo", "/dies-on-reuse", "/dies-on-reuse"]
        sid = await client.request(
            b"POST", b"/dies-on-reuse", headers=[(b"content-length", b"2")], body=[b"hi"]
        )
        (posted,) = await client.wait(sid)
        assert posted.status == 502
        assert posted.headers[b"meshlet-proxy-error"] == b"upstream_closed"
    finally:
        client.close()
    assert app.connections == 2


async def test_streams_the_proxy_refuses_never_reach_the_app(app: App, gateway: Gateway) -> None:
    client = await gateway.connect(app.port)
    try:
        missing = await client.get(b"/echo", orig_proto=None)
        assert missing.status == 400
        assert missing.headers[b"meshlet-proxy-error"] == b"malformed_request"
        other = await client.get(b"/echo", orig_proto=b"HTTP/2")
        assert other.status == 400
        assert (await client.get(b"/echo")).status == 200  # the connection is fine
    finally:
        client.close()
    assert [r.target for r in app.requests] == ["/echo"]


async def test_an_app_refusing_connections_is_a_502(gateway: Gateway) -> None:
    client = await gateway.connect(free_port())
    try:
        response = await client.get(b"/")
    finally:
        client.close()
    assert response.status == 502
    assert response.headers[b"meshlet-proxy-error"] == b"upstream_connect_refused"
    metrics = await gateway.server.metrics()
    assert re.search(
        r'response_total\{direction="inbound",authority="app.shop",tls="true",client_id="[^"]+",'
        r'status_code="502",classification="failure"\} 1',
        metrics,
    ), metrics


async def test_a_large_response_follows_flow_control(app: App, gateway: Gateway) -> None:
    """8 MiB to a client that acknowledges late, half a window at a time: ``h2`` would fail
    the connection had the proxy sent past a window; the body arrives whole."""
    client = await gateway.connect(app.port, ack_delay=0.005)
    try:
        response = await client.get(b"/big")
    finally:
        client.close()
    assert response.status == 200
    assert len(response.data) == BIG
    assert hashlib.sha256(response.data).digest() == hashlib.sha256(big_body()).digest()


async def test_a_reset_stream_closes_its_app_connection_only(app: App, gateway: Gateway) -> None:
    client = await gateway.connect(app.port)
    try:
        slow = await client.request(b"GET", b"/slow")
        drip = await client.request(b"GET", b"/drip")
        with trio.fail_after(10):
            while len(client.responses[drip].data) < 4096:
                await client.read_once()
        await client.reset(drip)
        with trio.fail_after(10):
            await app.drip_closed.wait()  # the app connection was closed
        (slow_response,) = await client.wait(slow)
        assert slow_response.status == 200
        assert (await client.get(b"/echo")).status == 200
    finally:
        client.close()


async def test_draining_sends_goaway_and_finishes_the_streams(app: App, gateway: Gateway) -> None:
    """SIGTERM: GOAWAY naming the last stream, the stream in flight answered, then the end.
    (Read frame by frame: ``h2`` takes no frame after a GOAWAY.)"""
    client = await gateway.connect(app.port)
    try:
        assert (await client.get(b"/echo")).status == 200
        slow = await client.request(b"GET", b"/slow")
        with trio.fail_after(10):
            while not app.requests or app.requests[-1].target != "/slow":
                await trio.sleep(0.01)
        gateway.server.context.lifecycle.drain()
        raw = b""
        with trio.fail_after(10):
            while data := await client.conn.receive():
                raw += data
    finally:
        client.close()
    frames = []  # (type, flags, stream id, payload)
    while len(raw) >= 9:
        length = int.from_bytes(raw[:3], "big")
        frames.append((raw[3], raw[4], int.from_bytes(raw[5:9], "big"), raw[9 : 9 + length]))
        raw = raw[9 + length :]
    goaways = [i for i, f in enumerate(frames) if f[0] == _GOAWAY]
    assert goaways, frames
    assert int.from_bytes(frames[goaways[0]][3][:4], "big") == slow
    after = [(kind, flags) for kind, flags, sid, _ in frames[goaways[0] :] if sid == slow]
    assert (_HEADERS, _END_HEADERS) in after  # the response head came after the GOAWAY
    assert after[-1] == (_DATA, _END_STREAM)  # and its body, to the end


async def test_the_inbound_policy_refuses_each_request(
    app: App, identity_service: IdentityService, start_mesh_proxy: StartMeshProxy
) -> None:
    gateway = await start_gateway(
        identity_service, start_mesh_proxy, default_inbound_policy=DefaultInboundPolicy.DENY
    )
    client = await gateway.connect(app.port)
    try:
        response = await client.get(b"/echo")
    finally:
        client.close()
    assert response.status == 403
    assert response.headers[b"meshlet-proxy-error"] == b"unauthorized"
    assert app.requests == []


async def test_keepalive_ends_a_silent_peer_and_keeps_an_answering_one(
    app: App, identity_service: IdentityService, start_mesh_proxy: StartMeshProxy
) -> None:
    """A peer that never answers the gateway's PING is closed after the keepalive timeout; one
    whose HTTP/2 stack answers (``h2`` does) keeps its connection through many intervals."""
    keepalive = {"http2_keepalive_interval": 0.2, "http2_keepalive_timeout": 0.2}
    gateway = await start_gateway(identity_service, start_mesh_proxy, **keepalive)
    answering = await gateway.connect(app.port)
    silent = await gateway.client.mesh.connect_endpoint(
        ("127.0.0.1", app.port),
        DB,
        timeout=5.0,
        metrics=gateway.client.context.metrics,
        direction="outbound",
        session=Session.HTTP1_OVER_H2,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_answer_pings, answering)
            await silent.send(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # SETTINGS
            raw = b""
            with trio.fail_after(10):
                while data := await silent.receive():
                    raw += data
            await trio.sleep(1)  # five more intervals for the answering peer
            nursery.cancel_scope.cancel()
        kinds = []
        while len(raw) >= 9:
            length = int.from_bytes(raw[:3], "big")
            kinds.append(raw[3])
            raw = raw[9 + length :]
        assert _PING in kinds, kinds  # asked, never answered, then closed
        assert not answering.eof
        assert (await answering.get(b"/echo")).status == 200
    finally:
        silent.close()
        answering.close()


async def _answer_pings(client: H2Client) -> None:
    while not client.eof:
        await client.read_once()  # ``h2`` answers the PINGs it reads
