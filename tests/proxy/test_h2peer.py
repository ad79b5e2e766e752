"""The per-stream HTTP/2 endpoint (``proxy/h2peer.py``), sans-IO: bytes in, events and frames out.
The other end is the ``h2`` library, so every frame is checked by an independent implementation."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from proxy.h2peer import (
    CANCEL,
    INITIAL_WINDOW,
    REFUSED_STREAM,
    Data,
    GoAwayReceived,
    Headers,
    Peer,
    PeerError,
    Reset,
    WindowOpened,
    encode_block,
)

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"web"),
    (b":path", b"/x"),
    (b"te", b"trailers"),
]


def _h2(client_side: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def _pair_as_server() -> tuple[Peer, h2.connection.H2Connection]:
    """Our peer as the server of an h2 client, settings exchanged."""
    peer = Peer(client_side=False)
    peer.initiate()
    client = _h2(client_side=True)
    peer.feed(client.data_to_send())
    client.receive_data(bytes(peer.out))
    peer.out.clear()
    peer.feed(client.data_to_send())  # the SETTINGS ACK
    peer.out.clear()
    return peer, client


def _pair_as_client() -> tuple[Peer, h2.connection.H2Connection]:
    peer = Peer(client_side=True)
    peer.initiate()
    server = _h2(client_side=False)
    server.receive_data(bytes(peer.out))
    peer.out.clear()
    peer.feed(server.data_to_send())
    server.receive_data(bytes(peer.out))
    peer.out.clear()
    return peer, server


def test_a_request_arrives_as_headers_data_and_trailers() -> None:
    peer, client = _pair_as_server()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"hello")
    client.send_headers(1, [(b"grpc-timeout", b"1S")], end_stream=True)
    events = peer.feed(client.data_to_send())
    assert events == [
        Headers(1, REQUEST, False),
        Data(1, b"hello", 5, False),
        Headers(1, [(b"grpc-timeout", b"1S")], True),
    ]


def test_bytes_split_anywhere_give_the_same_events() -> None:
    peer, client = _pair_as_server()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"x" * 1000, end_stream=True)
    wire = client.data_to_send()
    events = []
    for index in range(len(wire)):
        events += peer.feed(wire[index : index + 1])
    assert events == [Headers(1, REQUEST, False), Data(1, b"x" * 1000, 1000, True)]


@pytest.mark.parametrize("step", [1, 7, 30, 100])
def test_a_whole_connection_in_pieces_of_any_size_gives_the_same_events(step: int) -> None:
    """The preface, SETTINGS and streams cut into ``step``-byte reads: frames that end inside
    a read and frames that span reads give the same events as one read."""
    client = _h2(client_side=True)
    client.send_headers(1, REQUEST)
    client.send_data(1, b"y" * 300, end_stream=True)
    client.send_headers(3, REQUEST, end_stream=True)
    wire = client.data_to_send()
    whole = Peer(client_side=False).feed(wire)
    peer = Peer(client_side=False)
    events = []
    for index in range(0, len(wire), step):
        events += peer.feed(wire[index : index + step])
    assert events == whole
    assert events == [
        WindowOpened(0),  # the client's SETTINGS name an initial window
        Headers(1, REQUEST, False),
        Data(1, b"y" * 300, 300, True),
        Headers(3, REQUEST, True),
    ]
    assert not peer._buffer


def test_responses_the_peer_sends_are_valid_for_h2() -> None:
    peer, client = _pair_as_server()
    client.send_headers(1, REQUEST, end_stream=True)
    peer.feed(client.data_to_send())
    peer.send_headers(1, [(b":status", b"200"), (b"x-long", b"v" * 40000)], False)
    peer.send_data(1, b"body", False)
    peer.send_headers(1, [(b"grpc-status", b"0")], True)
    events = client.receive_data(bytes(peer.out))
    kinds = [type(e) for e in events]
    assert h2.events.ResponseReceived in kinds  # 40 KB of headers: HEADERS + CONTINUATION
    received = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert dict(received.headers)[b"x-long"] == b"v" * 40000
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert trailers.headers == [(b"grpc-status", b"0")]
    assert h2.events.StreamEnded in kinds


def test_send_window_follows_settings_and_window_updates() -> None:
    peer, server = _pair_as_client()
    stream = peer.open_stream()
    peer.send_headers(stream, REQUEST, False)
    assert peer.window(stream) == 16384  # a frame at most
    sent = 0
    while peer.window(stream):
        size = peer.window(stream)
        peer.send_data(stream, b"y" * size, False)
        sent += size
    assert sent == INITIAL_WINDOW
    events = server.receive_data(bytes(peer.out))
    peer.out.clear()
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    received = sum(e.flow_controlled_length for e in data)
    assert received == INITIAL_WINDOW
    server.acknowledge_received_data(received, stream)
    opened = peer.feed(server.data_to_send())
    assert WindowOpened(stream) in opened
    assert peer.window(stream) > 0


def test_consumed_bytes_are_returned_to_the_sender() -> None:
    peer, client = _pair_as_server()
    client.send_headers(1, REQUEST)
    for _ in range(3):
        client.send_data(1, b"z" * 16000)
    peer.feed(client.data_to_send())
    assert client.local_flow_control_window(1) == INITIAL_WINDOW - 48000
    peer.consumed(1, 48000)
    client.receive_data(bytes(peer.out))
    assert client.local_flow_control_window(1) == INITIAL_WINDOW


def test_an_upstream_returns_connection_window_on_receipt_and_stream_window_once_sent_on() -> None:
    """The client side (a shared upstream) gives the connection's window back as DATA arrives, so
    a stream whose client is slow holds back only its own window, never the connection's."""
    peer, server = _pair_as_client()
    streams = [peer.open_stream() for _ in range(24)]
    for stream in streams:
        peer.send_headers(stream, REQUEST, True)
    server.receive_data(bytes(peer.out))
    peer.out.clear()
    received = 0
    for stream in streams:  # a stream window each, 1.5 MiB in all: more than the connection's
        server.send_headers(stream, [(b":status", b"200")])
        for _ in range(4):
            server.send_data(stream, b"z" * 16383)
        events = peer.feed(server.data_to_send())
        received += sum(e.flow for e in events if isinstance(e, Data))
        server.receive_data(bytes(peer.out))  # nothing consumed: connection updates only
        peer.out.clear()
        assert server.local_flow_control_window(stream) == INITIAL_WINDOW - 4 * 16383
    assert received == 24 * 4 * 16383
    assert server.outbound_flow_control_window > 1 << 19  # given back as it arrived
    peer.consumed(streams[0], 4 * 16383)
    server.receive_data(bytes(peer.out))
    assert server.local_flow_control_window(streams[0]) == INITIAL_WINDOW


def test_a_server_side_peer_returns_connection_window_only_when_passed_on() -> None:
    """A client's bytes are its back-pressure: 5 streams of a window each (320 KiB, past the
    quarter window at which the peer would send a connection WINDOW_UPDATE) come back to the
    client only once consumed."""
    peer, client = _pair_as_server()
    before = client.outbound_flow_control_window
    for stream in range(1, 11, 2):
        client.send_headers(stream, REQUEST)
        for _ in range(4):
            client.send_data(stream, b"z" * 16383)
    sent = before - client.outbound_flow_control_window
    assert sent == 5 * 4 * 16383
    peer.feed(client.data_to_send())
    client.receive_data(bytes(peer.out))
    peer.out.clear()
    assert client.outbound_flow_control_window == before - sent  # held until consumed
    for stream in range(1, 11, 2):
        peer.consumed(stream, 4 * 16383)
    client.receive_data(bytes(peer.out))
    assert client.outbound_flow_control_window == before  # and given back then


def test_ping_is_answered_and_goaway_reported() -> None:
    peer, client = _pair_as_server()
    client.ping(b"12345678")
    assert peer.feed(client.data_to_send()) == []
    answers = client.receive_data(bytes(peer.out))
    assert any(isinstance(e, h2.events.PingAckReceived) for e in answers)
    client.close_connection(last_stream_id=0)
    assert peer.feed(client.data_to_send()) == [GoAwayReceived(0, 0)]


def test_resets_both_ways_and_later_frames_are_dropped() -> None:
    peer, server = _pair_as_client()
    first, second = peer.open_stream(), peer.open_stream()
    peer.send_headers(first, REQUEST, True)
    peer.send_headers(second, REQUEST, True)
    server.receive_data(bytes(peer.out))
    peer.out.clear()
    server.reset_stream(first, REFUSED_STREAM)
    assert peer.feed(server.data_to_send()) == [Reset(first, REFUSED_STREAM)]
    peer.reset(second, CANCEL)
    events = server.receive_data(bytes(peer.out))
    assert any(isinstance(e, h2.events.StreamReset) for e in events)
    peer.out.clear()
    # the server answered before it saw the reset: dropped, its bytes returned at once
    late = b"\x00\x00\x04\x00\x01" + second.to_bytes(4, "big") + b"late"
    assert peer.feed(late) == []
    assert peer._recv_conn_owed == 4


def test_literal_blocks_leave_the_decoder_table_empty() -> None:
    decoder = hpack.Decoder()
    block = encode_block([(b"x-a", b"1"), (b"x-b", b"v" * 200)])
    assert decoder.decode(block, raw=True) == [(b"x-a", b"1"), (b"x-b", b"v" * 200)]
    assert len(decoder.header_table.dynamic_entries) == 0


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "preface"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x09\x00\x00\x00\x00\x01", "CONTINU"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x40\x01\x00\x00\x00\x00\x00\x01", "large"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x03\x00\x00\x00\x00\x00" + bytes(4),
         "RST_STREAM"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x01\x01\x05\x00\x00\x00\x02\x82",
         "even"),
    ],
)  # fmt: skip
def test_protocol_errors_are_refused(wire: bytes, message: str) -> None:
    peer = Peer(client_side=False)
    with pytest.raises(PeerError, match=message):
        peer.feed(wire)


def test_our_settings_ask_for_no_hpack_table_and_h2_then_sends_no_indexed_entries() -> None:
    peer, server = _pair_as_client()
    assert server.remote_settings.header_table_size == 0
    headers = [(b":status", b"200"), (b"server", b"h2"), (b"x-id", b"7")]
    for stream_id in (1, 3):
        assert peer.open_stream() == stream_id
        peer.send_headers(stream_id, REQUEST, True)
        server.receive_data(bytes(peer.out))
        peer.out.clear()
        server.send_headers(stream_id, headers, end_stream=True)
        assert peer.feed(server.data_to_send()) == [Headers(stream_id, headers, True)]
        assert len(peer.decoder._table.dynamic_entries) == 0


def test_repeated_responses_of_an_encoder_that_indexes_after_a_size_update_hit_the_cache() -> None:
    """nginx: "literal with incremental indexing" for its fields, but a table size update to 0
    first once the client's SETTINGS named a table size; the blocks then repeat byte for byte and
    leave the table empty, so the second one is served from the cache."""
    peer, _ = _pair_as_client()
    size_update_to_zero = b"\x20"
    fields = b"\x88" + b"\x76\x0cnginx/1.22.1" + b"\x5c\x016"  # :status 200, server, content-length
    block = size_update_to_zero + fields
    response = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big") + block
    peer.open_stream()
    expected = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"content-length", b"6")]
    assert peer.feed(response) == [Headers(1, expected, True)]
    assert len(peer.decoder._table.dynamic_entries) == 0
    for stream_id in (3, 5):
        if stream_id == 5:
            peer.decoder._decoder.decode = None  # type: ignore[assignment]  # decoding would fail
        peer.open_stream()
        again = len(fields).to_bytes(3, "big") + b"\x01\x05" + stream_id.to_bytes(4, "big")
        assert peer.feed(again + fields) == [Headers(stream_id, expected, True)]
