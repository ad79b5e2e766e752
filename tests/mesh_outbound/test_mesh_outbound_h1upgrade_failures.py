"""Upgraded HTTP/1 requests (docs/mesh-outbound.md, "HTTP/1 over HTTP/2 between proxies") when
something goes wrong on either side: the peer's GOAWAY, resets before and after the head, a
peer breaking HTTP/2, a client leaving mid-body, an answer before the body ended. Each must end
with the right answer (or reset) for the client and no stream left on the shared connection.
And the HTTP/1 client's keep-alive across answers without a body (HEAD, 204, 304), with a
length, without one, and its ``Connection: close``.
Same parties as ``test_mesh_outbound_h1upgrade.py``: the real outbound proxy and the stand-in
server proxy ``mo_h1h2peer.H1H2Peer``."""

from __future__ import annotations

import contextlib
import hashlib

import h11
import pytest
import trio

from proxy.h2upstream import Upstream
from tests.mesh_outbound.mo_h1h2peer import NOLENGTH_BYTES
from tests.mesh_outbound.test_mesh_outbound_h1upgrade import (
    HOST,
    Upgrade,
    _curl,
    _fields,
    _raw,
    identity,
    upgrade,
)

__all__ = ["identity", "upgrade"]  # the fixtures, shared with the main module

pytestmark = pytest.mark.trio

CANCEL = 0x8


def _upstream(upgrade: Upgrade) -> Upstream:
    assert upgrade.context.outbound is not None
    (up,) = upgrade.context.outbound.h2_upstreams.all()
    return up


async def _no_stream_left(up: Upstream) -> None:
    """The attempts' streams are forgotten on the connection (each attempt's last step runs
    just after the client got its answer)."""
    with trio.fail_after(5):
        while up.streams or up.peer.open_streams:
            await trio.sleep(0.02)


async def _reset_answer(port: int, request: bytes) -> bytes:
    """What the proxy sent before resetting (or closing) the client connection."""
    received = b""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(65536):
                    received += chunk
    return received


async def test_a_stream_above_a_goaways_last_id_is_sent_again_on_a_new_connection(
    upgrade: Upgrade,
) -> None:
    upgrade.peer.goaway = 1
    head, body = await _curl(upgrade.port, "/echo", "--data-binary", "again")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == f"5 {hashlib.sha256(b'again').hexdigest()}".encode()
    first, second = upgrade.peer.streams
    assert first.refused
    assert bytes(second.body) == b"again"
    assert upgrade.peer.connections == 2
    await _no_stream_left(_upstream(upgrade))  # the refusing connection is gone from the pool


async def test_failures_before_and_after_the_head_leave_the_shared_connection_clean(
    upgrade: Upgrade,
) -> None:
    """A reset before the head (502), a reset mid-response (the client connection is reset),
    the route timeout (504, the stream reset upstream): the one shared connection carries them
    all, then serves the next request with no stream of theirs still counted on it."""
    head, _ = await _curl(upgrade.port, "/reset")
    assert head.startswith(b"HTTP/1.1 502"), head
    received = await _reset_answer(
        upgrade.port, f"GET /reset-mid HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    )
    assert not received.endswith(b"0\r\n\r\n"), received  # never a clean end
    head, _ = await _curl(upgrade.port, "/stall")
    assert head.startswith(b"HTTP/1.1 504"), head
    up = _upstream(upgrade)
    await _no_stream_left(up)
    _, body = await _curl(upgrade.port, "/")
    assert body == b"hello"
    assert upgrade.peer.connections == 1
    assert _upstream(upgrade) is up
    await _no_stream_left(up)
    stall = next(s for s in upgrade.peer.streams if s.field(b":path") == b"/stall")
    with trio.fail_after(5):
        while stall.reset is None:
            await trio.sleep(0.02)
    assert stall.reset == CANCEL


async def test_data_before_the_response_head_is_the_peers_protocol_error(
    upgrade: Upgrade,
) -> None:
    """A peer that ends a stream with DATA and never a head (an HTTP/2 protocol error) gets the
    client a 502 at once, not a request left waiting forever (no route timeout here)."""
    with trio.fail_after(5):
        head, _ = await _curl(upgrade.port, "/data-first")
    assert head.startswith(b"HTTP/1.1 502"), head
    assert _fields(head)[b"meshlet-proxy-error"] == b"upstream_protocol_error"
    await _no_stream_left(_upstream(upgrade))


async def test_a_client_leaving_mid_body_resets_its_stream(upgrade: Upgrade) -> None:
    """A body past the retry buffer is streaming when the client goes: the stream is reset
    upstream (``CANCEL``) and forgotten, the shared connection stays."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", upgrade.port)
        async with stream:
            head = f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 400000\r\n\r\n"
            await stream.send_all(head.encode() + b"x" * 150_000)
            while not (upgrade.peer.streams and len(upgrade.peer.streams[0].body) > 100_000):
                await trio.sleep(0.02)
        (record,) = upgrade.peer.streams
        while record.reset is None:
            await trio.sleep(0.02)
    assert record.reset == CANCEL
    up = _upstream(upgrade)
    await _no_stream_left(up)
    _, body = await _curl(upgrade.port, "/")
    assert body == b"hello"
    assert upgrade.peer.connections == 1


async def test_an_answer_before_the_body_ended_ends_the_upload(upgrade: Upgrade) -> None:
    """The peer answers 413 on the HEADERS, while the client is still sending: the client gets
    the 413, its connection is then closed (the rest of its body was never read), and the
    stream's upload stops (reset upstream)."""
    head = f"POST /early HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\n"
    answer = await _raw(upgrade.port, head.encode() + b"x" * 70_000)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert answer.endswith(b"\r\n\r\ntoo large"), answer
    (record,) = upgrade.peer.streams
    with trio.fail_after(5):
        while record.reset is None:
            await trio.sleep(0.02)
    assert record.reset == CANCEL
    await _no_stream_left(_upstream(upgrade))


async def test_one_client_connection_keeps_alive_across_every_framing(upgrade: Upgrade) -> None:
    """One HTTP/1.1 connection (a strict client, h11) carries a HEAD, a 204, a 304 with a
    content-length, a response with a length and one without (chunked), each read to its end;
    the last request says ``Connection: close`` and the proxy closes after answering it."""
    client = h11.Connection(h11.CLIENT)
    requests = [("HEAD", "/"), ("GET", "/204"), ("GET", "/304"), ("GET", "/"), ("GET", "/nolength")]
    answers: list[tuple[int, bytes]] = []
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", upgrade.port)
        async with stream:
            for number, (method, path) in enumerate(requests, 1):
                headers = [("Host", HOST)]
                if number == len(requests):
                    headers.append(("Connection", "close"))
                request = h11.Request(method=method, target=path, headers=headers)
                await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
                status, body = 0, b""
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                answers.append((status, body))
                if number < len(requests):
                    client.start_next_cycle()
            assert await stream.receive_some(65536) == b""  # closed after the last answer
    assert [status for status, _ in answers] == [200, 204, 304, 200, 200]
    assert [len(body) for _, body in answers] == [0, 0, 0, 5, NOLENGTH_BYTES]
    assert upgrade.peer.connections == 1
    await _no_stream_left(_upstream(upgrade))
