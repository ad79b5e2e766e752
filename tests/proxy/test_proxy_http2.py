"""HTTP/2 through the proxy: curl --http2-prior-knowledge, h2load, gRPC, GOAWAY, errors."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import h2.errors
import h2.events
import pytest
import trio
import trio.testing
from h2.config import H2Configuration
from h2.connection import H2Connection

from tests.proxy.conftest import HERE, Nginx, StartProxy, curl, free_port, run, spawn_backend, stop

pytestmark = pytest.mark.trio


class _GoawayTolerantClient(H2Connection):
    """h2 4.x closes a connection's state machine on GOAWAY and then rejects the responses the
    server still sends (RFC 9113 6.8 allows them); this client only reports the GOAWAY."""

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        return [], [event]


async def test_curl_prior_knowledge(start_proxy: StartProxy, nginx: Nginx) -> None:
    proxy = await start_proxy(("127.0.0.1", nginx.h2c_port))
    result = await curl("-i", "--http2-prior-knowledge", f"http://{proxy.inbound}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/2 200")
    assert result.stdout.endswith(b"hello h2\n")


async def test_large_body_through_64k_windows(start_proxy: StartProxy, nginx: Nginx) -> None:
    proxy = await start_proxy(("127.0.0.1", nginx.h2c_port))
    direct = await curl("--http2-prior-knowledge", f"http://127.0.0.1:{nginx.h2c_port}/big")
    proxied = await curl("--http2-prior-knowledge", f"http://{proxy.inbound}/big")
    assert proxied.returncode == 0, proxied.stderr
    assert len(proxied.stdout) == nginx.big_size
    assert hashlib.sha256(proxied.stdout).digest() == hashlib.sha256(direct.stdout).digest()


async def test_h2load_many_streams_on_few_connections(
    start_proxy: StartProxy, nginx: Nginx
) -> None:
    proxy = await start_proxy(("127.0.0.1", nginx.h2c_port))
    result = await run("h2load", "-n", "2000", "-c", "4", "-m", "20", f"http://{proxy.inbound}/")
    output = result.stdout.decode()
    assert "2000 succeeded, 0 failed, 0 errored" in output, output
    text = proxy.context.metrics.render().decode()
    assert f'request_total{{direction="inbound",authority="{proxy.inbound}"' in text
    assert 'status_code="200",classification="success"} 2000' in text


async def test_upstream_goaway_reaches_the_client_and_accepted_streams_finish(
    start_proxy: StartProxy, nginx: Nginx
) -> None:
    """nginx ends each connection after 3 requests (GOAWAY). Of 6 concurrent streams, the ones
    nginx accepted complete; the client learns from the GOAWAY which ones to retry; then the
    connection closes: nothing hangs."""
    proxy = await start_proxy(("127.0.0.1", nginx.goaway_port))
    client = _GoawayTolerantClient(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    for index in range(6):
        client.send_headers(
            client.get_next_available_stream_id(),
            [(b":method", b"GET"), (b":path", f"/{index}".encode()), (b":scheme", b"http"),
             (b":authority", b"app")],
            end_stream=True,
        )  # fmt: skip
    await stream.send_all(client.data_to_send())
    completed, reset, goaway = set(), set(), None
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            for event in client.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    completed.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    reset.add(event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event
            await stream.send_all(client.data_to_send())
    await stream.aclose()
    assert goaway is not None
    assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert completed == {1, 3, 5}
    assert goaway.last_stream_id == 5  # 7, 9, 11 were never processed: safe to retry
    assert not reset & completed


async def test_refused_upstream_gives_502_header(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(("127.0.0.1", free_port()))
    result = await curl("-i", "--http2-prior-knowledge", f"http://{proxy.inbound}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/2 502")
    assert b"meshlet-proxy-error: upstream_connect_refused" in result.stdout


async def test_failure_classification(start_proxy: StartProxy, nginx: Nginx) -> None:
    proxy = await start_proxy(("127.0.0.1", nginx.h2c_port))
    await curl("--http2-prior-knowledge", f"http://{proxy.inbound}/status/503")
    text = proxy.context.metrics.render().decode()
    assert 'status_code="503",classification="failure"} 1' in text


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[int]:
    process, port = spawn_backend(str(HERE / "grpc_echo.py"), "server")
    try:
        yield port
    finally:
        stop(process)


async def test_grpc_trailers_status_streaming_and_cancel(
    start_proxy: StartProxy, grpc_server: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", grpc_server))
    result = await run(sys.executable, str(HERE / "grpc_echo.py"), "client", proxy.inbound)
    assert result.returncode == 0, result.stderr
    checks = json.loads(result.stdout)
    assert checks["unary"] is True
    assert checks["trailer"] == "yes"
    assert checks["fail"] == ["NOT_FOUND", "no such thing"]
    assert checks["stream"] is True
    assert checks["deadline"] == "DEADLINE_EXCEEDED"
    assert checks["cancelled"] >= 1  # the client's RST_STREAM reached the server
    text = proxy.context.metrics.render().decode()
    assert 'status_code="200",classification="failure"}' in text  # grpc-status NOT_FOUND


async def test_silent_client_is_pinged_then_dropped(
    start_proxy: StartProxy, nginx: Nginx, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = await start_proxy(("127.0.0.1", nginx.h2c_port))
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    client.send_headers(
        1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")],
        end_stream=True,
    )  # fmt: skip
    await stream.send_all(client.data_to_send())
    started = trio.current_time()
    pinged_at = None
    with trio.fail_after(60):
        while data := await stream.receive_some(65536):
            for event in client.receive_data(data):
                if isinstance(event, h2.events.PingReceived):
                    pinged_at = trio.current_time()
            client.data_to_send()  # a dead client: its PING ACK never leaves
    closed_at = trio.current_time()
    await stream.aclose()
    assert pinged_at is not None
    assert pinged_at - started >= 10.0  # the keepalive interval
    assert closed_at - pinged_at >= 3.0  # the keepalive timeout


async def test_drain_sends_a_shutdown_notice_then_closes_idle_connections(
    start_proxy: StartProxy, nginx: Nginx
) -> None:
    proxy = await start_proxy(("127.0.0.1", nginx.h2c_port))
    client = _GoawayTolerantClient(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    client.send_headers(
        1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")],
        end_stream=True,
    )  # fmt: skip
    await stream.send_all(client.data_to_send())
    ended, goaway = False, None
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            for event in client.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    ended = True
                    proxy.context.lifecycle.drain()  # SIGTERM, in effect
                elif isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event
            await stream.send_all(client.data_to_send())
    await stream.aclose()
    assert ended
    assert goaway is not None
    assert goaway.last_stream_id == 2**31 - 1  # a notice: nothing in flight is refused
