"""``meshlet tap`` as a subprocess against a real tap server, and its formatting and errors."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio

from meshlet.tap import format_event, parse_target
from tests.tap.conftest import MESHLET, Lines, RunningTap, publish_request


@pytest.mark.trio
async def test_prints_linkerd_style_lines(tap_server: RunningTap, spawn: Any) -> None:
    _, lines = await spawn(
        [MESHLET, "tap", tap_server.address, "--path", "/api", "--max-rps", "50"]
    )
    await tap_server.wait_subscribers()
    tap_server.exchange(1, path=b"/health")  # filtered out by the server
    tapped = publish_request(tap_server.hub, 2)
    assert tapped is not None
    tapped.response_start(200)
    tapped.response_bytes += 12
    tapped.end(grpc_status=14)
    req, rsp, end = [(await lines.next()).decode() for _ in range(3)]
    head = "id=3:2 proxy=in src=10.0.0.9:41000 dst=127.0.0.1:8080 tls=true"
    assert req == f"req {head} :method=GET :authority=web.default:80 :path=/api/items"
    assert rsp.startswith(f"rsp {head} :status=200 latency=")
    assert rsp.endswith("µs")
    assert end.startswith(f"end {head} grpc-status=UNAVAILABLE duration=")
    assert end.endswith("µs response-length=12B")
    (subscriber,) = tap_server.hub._subscribers
    assert subscriber.bucket.rate == 50


@pytest.mark.trio
async def test_json_and_wide_output(tap_server: RunningTap, spawn: Any) -> None:
    _, as_json = await spawn([MESHLET, "tap", tap_server.address, "-o", "json"])
    _, wide = await spawn([MESHLET, "tap", tap_server.address, "-o", "wide"])
    await tap_server.wait_subscribers(2)
    tapped = publish_request(tap_server.hub, 5, client_id="web.default.serviceaccount.identity")
    assert tapped is not None
    record = json.loads(await as_json.next())
    assert record["event"] == "request"
    assert record["client_id"] == "web.default.serviceaccount.identity"
    line = (await wide.next()).decode()
    assert line.endswith(":scheme=http client_id=web.default.serviceaccount.identity")


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def meshlet_tap(*args: str) -> tuple[int, str]:
    with trio.fail_after(20):
        done = await trio.run_process(
            [MESHLET, "tap", *args], capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stderr.decode().strip()


@pytest.mark.trio
async def test_refused_connection_is_one_clear_line() -> None:
    port = unused_port()
    code, err = await meshlet_tap(f"127.0.0.1:{port}")
    assert code == 1
    assert err == (
        f"meshlet tap: 127.0.0.1:{port} refused the connection: is the proxy running, "
        "and its tap on that port?"
    )


@pytest.mark.trio
async def test_server_refusal_is_shown(tap_server: RunningTap) -> None:
    code, err = await meshlet_tap(tap_server.address, "--status", "200")
    assert code == 1
    assert err == (
        f"meshlet tap: {tap_server.address} answered 400: "
        "status must be a class: 1xx, 2xx, 3xx, 4xx or 5xx"
    )


@pytest.mark.trio
async def test_stream_ending_is_reported(nursery: trio.Nursery, spawn: Any) -> None:
    async def one_shot(stream: trio.SocketStream) -> None:  # answers, then goes away
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await stream.aclose()

    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, one_shot, [listener])
    code, err = await meshlet_tap(f"127.0.0.1:{port}")
    assert code == 1
    assert err == "meshlet tap: the proxy ended the tap stream (did it shut down?)"


@pytest.mark.trio
async def test_bad_arguments() -> None:
    code, err = await meshlet_tap("host/path")
    assert (code, err) == (2, "meshlet tap: 'host/path' is not HOST[:PORT]")  # a usage error
    code, err = await meshlet_tap("127.0.0.1:1", "--max-rps", "0")
    assert code == 2
    assert "--max-rps must be more than 0" in err


TARGETS = [
    pytest.param("127.0.0.1", ("127.0.0.1", 4190), id="default-port"),
    pytest.param("127.0.0.1:4191", ("127.0.0.1", 4190), id="admin-port-means-tap"),
    pytest.param("localhost:14190", ("localhost", 14190), id="name"),
    pytest.param("http://10.1.2.3:4190/", ("10.1.2.3", 4190), id="url"),
    pytest.param("[::1]:4190", ("::1", 4190), id="v6"),
    pytest.param("::1", ("::1", 4190), id="bare-v6"),
]


@pytest.mark.parametrize(("text", "target"), TARGETS)
def test_parse_target(text: str, target: tuple[str, int]) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["", "a:b", "a:0", "a:70000", "[::1", "[::1]x", "a/b"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not"):
        parse_target(text)


def test_format_ignores_unknown_records() -> None:
    assert format_event({"event": "lost", "dropped": 1}) is None
    end = format_event(
        {
            "event": "end",
            "id": "1:1",
            "direction": "outbound",
            "error": "reset",
            "grpc_status": None,
        }
    )
    assert end is not None
    assert end.startswith("end id=1:1 proxy=out ")
    assert " error=reset " in end


@pytest.mark.trio
async def test_losses_are_reported_on_stderr(tap_server: RunningTap, spawn: Any) -> None:
    process, lines = await spawn([MESHLET, "tap", tap_server.address, "--max-rps", "10000"])
    await tap_server.wait_subscribers()
    for stream in range(100):  # the writer cannot run meanwhile: the 16-event buffer overflows
        tap_server.exchange(stream)
    assert (await lines.next()).startswith(b"req id=3:0 ")
    errors = Lines(process.stderr)
    assert await errors.next() == (
        b"meshlet tap: 95 requests dropped (output slower than the traffic), "
        b"0 skipped by --max-rps so far"
    )
