"""End-to-end flow control of one proxied HTTP/2 stream, sans-IO: h2 connections exchanging
bytes in memory, ``pump`` in between, no sockets."""

from __future__ import annotations

import h2.events
from h2.config import H2Configuration
from h2.connection import H2Connection

from proxy.h2conn import new_connection
from proxy.h2flow import Flow, pump

REQUEST = [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
WINDOW = 65535


def _exchange(a: H2Connection, b: H2Connection) -> list[h2.events.Event]:
    """Deliver what ``a`` has to send to ``b``; return ``b``'s events."""
    return b.receive_data(a.data_to_send())


def _pair() -> tuple[H2Connection, H2Connection, H2Connection, H2Connection]:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    proxy_down = new_connection(client_side=False)
    proxy_up = new_connection(client_side=True)
    client.initiate_connection()
    server.initiate_connection()
    _exchange(client, proxy_down)
    _exchange(proxy_down, client)
    _exchange(proxy_up, server)
    _exchange(server, proxy_up)
    _exchange(proxy_up, server)
    return client, proxy_down, proxy_up, server


def test_data_is_credited_to_the_sender_only_as_it_is_forwarded() -> None:
    client, down, up, server = _pair()
    client.send_headers(1, REQUEST)
    _exchange(client, down)
    up.send_headers(1, REQUEST)
    _exchange(up, server)
    flow = Flow(down, 1, up, 1)

    body = b"x" * WINDOW  # exactly the client's initial window
    sent = 0
    while sent < len(body):  # the client may send a whole window before any credit
        chunk = body[sent : sent + client.max_outbound_frame_size]
        client.send_data(1, chunk)
        sent += len(chunk)
    for event in _exchange(client, down):
        if isinstance(event, h2.events.DataReceived):
            flow.pending.append((event.data, event.flow_controlled_length - len(event.data)))

    # The upstream's window is also 65,535 bytes: all of it can go, and all of it is credited.
    assert pump(flow) is False
    assert not flow.pending
    received = sum(
        len(e.data) for e in _exchange(up, server) if isinstance(e, h2.events.DataReceived)
    )
    assert received == WINDOW
    credited = sum(
        e.delta for e in _exchange(down, client) if isinstance(e, h2.events.WindowUpdated)
    )
    assert credited > 0  # the client may send more: the proxy forwarded what it had

    # Now the upstream does not read (no WINDOW_UPDATE from the server): the next window's worth
    # of client data waits in the proxy, and the client is not credited for any of it.
    sent = min(client.local_flow_control_window(1), 16000)
    assert sent > 0
    client.send_data(1, b"y" * sent)
    for event in _exchange(client, down):
        if isinstance(event, h2.events.DataReceived):
            flow.pending.append((event.data, event.flow_controlled_length - len(event.data)))
    assert pump(flow) is False
    assert sum(len(data) for data, _ in flow.pending) == sent
    assert not [e for e in _exchange(down, client) if isinstance(e, h2.events.WindowUpdated)]

    # The server reads and credits the proxy: the queued data moves on, and only then is the
    # client credited.
    server.acknowledge_received_data(WINDOW, 1)
    _exchange(server, up)
    flow.ended = True
    assert pump(flow) is True
    events = _exchange(up, server)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == sent
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_trailers_follow_the_queued_data() -> None:
    client, down, up, server = _pair()
    up.send_headers(1, REQUEST)
    _exchange(up, server)
    server.send_headers(1, [(b":status", b"200")])
    _exchange(server, up)
    flow = Flow(up, 1, down, 1)
    client.send_headers(1, REQUEST, end_stream=True)
    _exchange(client, down)
    flow.pending.append((b"payload", 0))
    flow.trailers = [(b"grpc-status", b"0")]
    down.send_headers(1, [(b":status", b"200")])
    assert pump(flow) is True
    events = _exchange(down, client)
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("DataReceived") < kinds.index("TrailersReceived")
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert trailers.headers == [(b"grpc-status", b"0")]
