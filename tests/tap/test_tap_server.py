"""The tap server on loopback, read by a real ``curl -N`` and by raw sockets."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio

from proxy.settings import Address
from proxy.tap import TapHub
from proxy.tapserver import TapSettings, serve_tap
from tests.tap.conftest import Lines, RunningTap, publish_request


async def curl_status(url: str, *args: str) -> tuple[int, str]:
    done = await trio.run_process(
        ["curl", "--silent", "--max-time", "10", "--write-out", "\n%{http_code}", *args, url],
        capture_stdout=True,
        check=False,
    )
    body, _, code = done.stdout.decode().rpartition("\n")
    return int(code), body.strip()


@pytest.mark.trio
async def test_curl_streams_matching_events(tap_server: RunningTap, spawn: Any) -> None:
    process, lines = await spawn(
        ["curl", "-N", "--silent", f"http://{tap_server.address}/tap?path=/api&method=get"]
    )
    await tap_server.wait_subscribers()
    tap_server.exchange(1, path=b"/api/items")
    tap_server.exchange(2, path=b"/other")  # filtered out
    post = publish_request(tap_server.hub, 3, method=b"POST")  # filtered out
    assert post is None
    tap_server.exchange(4, path=b"/api/x")
    records = [json.loads(await lines.next()) for _ in range(6)]
    assert [(r["event"], r["id"]) for r in records] == [
        ("request", "3:1"),
        ("response", "3:1"),
        ("end", "3:1"),
        ("request", "3:4"),
        ("response", "3:4"),
        ("end", "3:4"),
    ]
    request = records[0]
    assert request["method"] == "GET"
    assert request["path"] == "/api/items"
    assert request["authority"] == "web.default:80"
    assert request["src"] == "10.0.0.9:41000"
    assert request["tls"] == "true"
    assert records[1]["status"] == 200
    assert records[2]["response_bytes"] == 12
    # The client going away ends the session and its subscription.
    process.kill()
    await tap_server.wait_subscribers(0)
    assert not tap_server.hub.active


@pytest.mark.trio
async def test_events_stream_as_they_happen(tap_server: RunningTap, spawn: Any) -> None:
    _, lines = await spawn(["curl", "-N", "--silent", f"http://{tap_server.address}/tap"])
    await tap_server.wait_subscribers()
    for stream in range(3):
        tapped = publish_request(tap_server.hub, stream)
        assert tapped is not None
        assert json.loads(await lines.next())["event"] == "request"  # before the response exists
        tapped.response_start(503)
        assert json.loads(await lines.next())["status"] == 503
        tapped.end(error="reset")
        assert json.loads(await lines.next())["error"] == "reset"


@pytest.mark.trio
async def test_refusals(tap_server: RunningTap) -> None:
    base = f"http://{tap_server.address}"
    assert await curl_status(f"{base}/nope") == (404, "not found; the tap is GET /tap")
    assert (await curl_status(f"{base}/tap", "-X", "POST"))[0] == 405
    code, body = await curl_status(f"{base}/tap?status=200")
    assert (code, body) == (400, "status must be a class: 1xx, 2xx, 3xx, 4xx or 5xx")
    code, body = await curl_status(f"{base}/tap?bogus=1")
    assert code == 400
    assert "unknown parameter 'bogus'" in body
    assert not tap_server.hub.active


@pytest.mark.trio
async def test_session_limit(tap_server: RunningTap, spawn: Any) -> None:
    for _ in range(2):  # the fixture's hub takes two sessions
        await spawn(["curl", "-N", "--silent", f"http://{tap_server.address}/tap"])
    await tap_server.wait_subscribers(2)
    code, body = await curl_status(f"http://{tap_server.address}/tap")
    assert (code, body) == (503, "2 tap sessions are open already")


@pytest.mark.trio
async def test_slow_reader_loses_events_not_memory(tap_server: RunningTap) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", tap_server.port)
    await stream.send_all(b"GET /tap?max_rps=10000 HTTP/1.1\r\nhost: t\r\n\r\n")
    lines = Lines(stream)
    assert (await lines.next()).startswith(b"HTTP/1.1 200 ")
    await tap_server.wait_subscribers()
    (subscriber,) = tap_server.hub._subscribers
    # 500 exchanges while the server's writer cannot run: the buffer (16 events) fills and
    # stays full; the rest is counted, not kept.
    for n in range(500):
        tap_server.exchange(n)
        assert len(subscriber) <= 16
    events: list[dict[str, Any]] = []
    while not events or events[-1]["event"] != "lost":
        line = await lines.next()
        if line.startswith(b"{"):
            events.append(json.loads(line))
    assert len(events) == 17  # the 16 buffered events, then the loss report
    assert events[-1] == {"event": "lost", "dropped": 495, "rate_limited": 0}
    # Once drained, new events flow again.
    tap_server.exchange(1000)
    while True:
        line = await lines.next()
        if line.startswith(b"{"):
            assert json.loads(line)["id"] == "3:1000"
            break
    await stream.aclose()


@pytest.mark.trio
async def test_junk_gets_400(tap_server: RunningTap) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", tap_server.port)
    await stream.send_all(b"\x01\x03\x01 not http at all\r\n\r\n")
    with trio.fail_after(10):
        rest = b""
        while data := await stream.receive_some(4096):
            rest += data
    assert rest.startswith(b"HTTP/1.1 400 ")
    assert rest.endswith(b"\r\n\r\nmalformed HTTP/1.1 request\n")
    await stream.aclose()
    assert not tap_server.hub.active


@pytest.mark.trio
async def test_tls_without_identity_is_closed(tap_server: RunningTap) -> None:
    """Without identity the tap has no certificate: a TLS client is closed, not answered."""
    stream = await trio.open_tcp_stream("127.0.0.1", tap_server.port)
    async with stream:
        await stream.send_all(b"\x16\x03\x01\x00\x05hello")
        with trio.fail_after(10):
            assert await stream.receive_some(4096) == b""
    assert not tap_server.hub.active


@pytest.mark.trio
async def test_client_that_stops_reading_is_cut_off(nursery: trio.Nursery) -> None:
    hub = TapHub(buffer_events=64)
    settings = TapSettings(listen=Address("127.0.0.1", 0), write_timeout=0.3)
    _, port = await nursery.start(serve_tap, hub, settings)
    tap = RunningTap(hub, port)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(b"GET /tap?max_rps=10000 HTTP/1.1\r\nhost: t\r\n\r\n")
    await tap.wait_subscribers()
    # Never read: the server's writes block, then time out; the session (only) ends.
    with trio.fail_after(30):
        n = 0
        while hub.active:
            for _ in range(20):
                tap.exchange(n, path=b"/" + b"x" * 1000)
                n += 1
            await trio.sleep(0.001)
    await stream.aclose()
    # The server is still serving.
    code, _ = await curl_status(f"http://{tap.address}/nope")
    assert code == 404
