"""One stream of the per-stream HTTP/2 path (``proxy/h2stream.py``), sans-IO: a client (h2)
-> the proxy's two ``Peer``s -> a server (h2), bytes in, frames out, windows checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import h2.config
import h2.connection
import h2.events

from proxy.h2peer import INITIAL_WINDOW, Data, Headers, Peer
from proxy.h2stream import MuxStream, forwardable, grpc_status, status_of

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


def _h2(client_side: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


@dataclass
class _Up:
    peer: Peer


@dataclass
class Hop:
    client: h2.connection.H2Connection
    down: Peer
    up: Peer
    server: h2.connection.H2Connection

    def client_to_proxy(self) -> list[Any]:
        return self.down.feed(self.client.data_to_send())

    def proxy_to_server(self) -> list[h2.events.Event]:
        events = self.server.receive_data(bytes(self.up.out))
        self.up.out.clear()
        return events

    def proxy_to_client(self) -> list[h2.events.Event]:
        events = self.client.receive_data(bytes(self.down.out))
        self.down.out.clear()
        return events


def _hop() -> Hop:
    down, up = Peer(client_side=False), Peer(client_side=True)
    down.initiate()
    up.initiate()
    client, server = _h2(client_side=True), _h2(client_side=False)
    hop = Hop(client, down, up, server)
    hop.client_to_proxy()
    hop.proxy_to_client()
    hop.client_to_proxy()
    hop.proxy_to_server()
    up.feed(server.data_to_send())
    hop.proxy_to_server()
    down.out.clear()
    return hop


def _stream(hop: Hop, body_limit: int, size: int) -> tuple[MuxStream, list[Any]]:
    hop.client.send_headers(1, REQUEST)
    sent = min(size, hop.client.local_flow_control_window(1))
    for offset in range(0, sent, 16384):
        chunk = b"b" * min(16384, sent - offset)
        hop.client.send_data(1, chunk, end_stream=offset + len(chunk) == size)
    events = hop.client_to_proxy()
    head = events[0]
    assert isinstance(head, Headers)
    stream = MuxStream(1, head.headers, method=b"POST", path=b"/", authority=b"a",
                       end_stream=False, now=0.0)  # fmt: skip
    for event in events[1:]:
        assert isinstance(event, Data)
        stream.add_body(event.data, event.flow, event.end_stream, body_limit)
    stream.up = cast(Any, _Up(hop.up))
    stream.up_id = hop.up.open_stream()
    hop.up.send_headers(stream.up_id, stream.headers, False)
    return stream, events


def test_request_body_goes_up_within_the_window_and_is_acknowledged_when_sent() -> None:
    hop = _hop()
    stream, _ = _stream(hop, body_limit=1 << 20, size=200_000)
    assert hop.client.local_flow_control_window(1) == 0  # the client is blocked on us
    stream.pump_request(hop.down)
    received = sum(
        e.flow_controlled_length
        for e in hop.proxy_to_server()
        if isinstance(e, h2.events.DataReceived)
    )
    assert received == INITIAL_WINDOW  # the server's window, not more
    hop.proxy_to_client()
    assert hop.client.local_flow_control_window(1) == INITIAL_WINDOW  # sent on: acknowledged
    assert stream.replayable is False  # the body has not ended yet


def test_a_small_complete_body_is_kept_and_sent_again_on_a_new_attempt() -> None:
    hop = _hop()
    stream, _ = _stream(hop, body_limit=65536, size=1000)
    assert stream.replayable
    stream.pump_request(hop.down)
    first = hop.proxy_to_server()
    assert any(isinstance(e, h2.events.StreamEnded) for e in first)
    stream.up_id = hop.up.open_stream()  # a retry: a new upstream stream
    stream.rewind()
    hop.up.send_headers(stream.up_id, stream.headers, False)
    stream.pump_request(hop.down)
    again = hop.proxy_to_server()
    data = [e for e in again if isinstance(e, h2.events.DataReceived)]
    assert sum(len(e.data) for e in data) == 1000
    assert data[-1].stream_id == stream.up_id


def test_a_body_over_the_retry_limit_is_not_kept() -> None:
    hop = _hop()
    stream, _ = _stream(hop, body_limit=100, size=1000)
    stream.pump_request(hop.down)
    assert stream.overflow
    assert not stream.replayable
    assert stream.body == []  # sent chunks dropped: nothing is held for a retry


def test_response_waits_for_the_client_window_and_ends_with_trailers() -> None:
    hop = _hop()
    stream, _ = _stream(hop, body_limit=65536, size=10)
    stream.committed = True
    hop.down.send_headers(1, [(b":status", b"200")], False)
    for _ in range(5):
        stream.resp.append((b"r" * 16384, 16384))
    stream.resp_ended = True
    stream.resp_trailers = [(b"grpc-status", b"0")]
    assert stream.pump_response(hop.down) is False  # 80 KiB > the client's 64 KiB window
    events = hop.proxy_to_client()
    got = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
    assert got == INITIAL_WINDOW
    for event in events:
        if isinstance(event, h2.events.DataReceived):
            hop.client.acknowledge_received_data(event.flow_controlled_length, 1)
    hop.client_to_proxy()  # the WINDOW_UPDATE
    assert stream.pump_response(hop.down) is True
    events = hop.proxy_to_client()
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert trailers[0].headers == [(b"grpc-status", b"0")]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_header_helpers() -> None:
    headers = [(b":status", b"200"), (b"connection", b"x"), (b"te", b"gzip"), (b"a", b"1")]
    assert forwardable(headers) == [(b":status", b"200"), (b"a", b"1")]
    assert forwardable([(b"te", b"trailers")]) == [(b"te", b"trailers")]
    assert status_of(headers) == 200
    assert status_of([(b":status", b"abc")]) == 0
    assert grpc_status([(b"grpc-status", b"5")]) == 5
    assert grpc_status([(b"grpc-status", b"x")]) == 2
    assert grpc_status([]) is None
