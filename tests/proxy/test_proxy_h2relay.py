"""The HTTP/2 frame relay, sans-IO: bytes from real h2 peers in, forwarded bytes and events out."""

from __future__ import annotations

import h2.events
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection

from proxy.h2relay import (
    FrameScanner,
    RelayError,
    RequestStarted,
    ResponseEnded,
    ResponseStarted,
    StreamReset,
    error_response,
    ping,
    rst_stream,
    without_dynamic_table,
)

REQUEST = [(b":method", b"POST"), (b":path", b"/echo.Echo/Unary"), (b":scheme", b"http"),
           (b":authority", b"web.shop:8080"), (b"content-type", b"application/grpc")]  # fmt: skip


def _peers() -> tuple[H2Connection, H2Connection, FrameScanner, FrameScanner]:
    """A client and a server connected through the two scanners of one relayed pair."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    requests, responses = FrameScanner(from_client=True), FrameScanner(from_client=False)
    client.initiate_connection()
    server.initiate_connection()
    _through(client, requests, server)
    _through(server, responses, client)
    _through(client, requests, server)
    return client, server, requests, responses


def _through(
    sender: H2Connection, scanner: FrameScanner, receiver: H2Connection
) -> tuple[list[object], list[h2.events.Event]]:
    wire = sender.data_to_send()
    forwarded, events = scanner.feed(wire)
    return list(events), receiver.receive_data(forwarded)


def test_a_grpc_exchange_is_forwarded_unchanged_and_observed() -> None:
    client, server, requests, responses = _peers()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    wire = client.data_to_send()
    forwarded, events = requests.feed(wire)
    assert forwarded == wire  # byte for byte: HPACK state stays shared
    assert events == [RequestStarted(1, b"web.shop:8080", end_stream=False)]
    received = server.receive_data(forwarded)
    assert any(isinstance(e, h2.events.RequestReceived) for e in received)

    server.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(1, b"\x00\x00\x00\x00\x02hi")
    server.send_headers(1, [(b"grpc-status", b"5"), (b"grpc-message", b"nope")], end_stream=True)
    observed, at_client = _through(server, responses, client)
    assert observed == [ResponseStarted(1, 200, False, None), ResponseEnded(1, 5)]
    trailers = next(e for e in at_client if isinstance(e, h2.events.TrailersReceived))
    assert (b"grpc-status", b"5") in trailers.headers


def test_bytes_may_arrive_one_at_a_time() -> None:
    client, _server, requests, _ = _peers()
    client.send_headers(1, REQUEST, end_stream=True)
    wire = client.data_to_send()
    forwarded, events = b"", []
    for index in range(len(wire)):
        out, seen = requests.feed(wire[index : index + 1])
        forwarded += out
        events += seen
    assert forwarded == wire
    assert events == [RequestStarted(1, b"web.shop:8080", end_stream=True)]


def test_injected_frames_wait_for_the_end_of_a_data_frame() -> None:
    client, server, _, responses = _peers()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())  # (not relayed: only the response side matters)
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"x" * 1000)
    wire = server.data_to_send()
    first, _ = responses.feed(wire[:-500])  # in the middle of the DATA frame
    assert responses.inject(ping()) == b""  # must not land inside the frame
    rest, _ = responses.feed(wire[-500:])
    assert first + rest == wire + ping()


def test_our_own_ping_ack_is_consumed() -> None:
    client, server, requests, _responses = _peers()
    client.receive_data(ping())  # the proxy pinged the client
    ack = client.data_to_send()
    forwarded, _ = requests.feed(ack)
    assert forwarded == b""
    client.ping(b"12345678")  # the client's own PING still reaches the server
    forwarded, _ = requests.feed(client.data_to_send())
    assert any(isinstance(e, h2.events.PingReceived) for e in server.receive_data(forwarded))


def test_an_injected_error_response_leaves_hpack_in_step() -> None:
    client, server, requests, responses = _peers()
    for stream_id in (1, 3):
        client.send_headers(stream_id, REQUEST, end_stream=True)
    _through(client, requests, server)
    events = client.receive_data(error_response(1, 502, b"upstream_closed"))
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert (b"meshlet-proxy-error", b"upstream_closed") in response.headers
    server.send_headers(3, [(b":status", b"200"), (b"x-after", b"yes")], end_stream=True)
    observed, at_client = _through(server, responses, client)
    after = next(e for e in at_client if isinstance(e, h2.events.ResponseReceived))
    assert (b"x-after", b"yes") in after.headers  # the client still decodes the server
    assert ResponseStarted(3, 200, True, None) in observed


def test_resets_are_reported() -> None:
    _, _, requests, _ = _peers()
    _, events = requests.feed(rst_stream(1, 8))
    assert events == [StreamReset(1, by_client=True)]


def test_garbage_instead_of_a_preface_is_refused() -> None:
    with pytest.raises(RelayError):
        FrameScanner(from_client=True).feed(b"GET / HTTP/1.1\r\n\r\n")


def test_settings_go_on_without_a_dynamic_table_and_both_hpack_contexts_follow() -> None:
    # Without the relay, a server indexes response fields in its dynamic table, so every
    # response changes the table the relay decodes against (and its block cache never hits).
    client, server, requests, responses = _peers()
    assert server.encoder.header_table_size == 0
    assert client.encoder.header_table_size == 0
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, REQUEST, end_stream=True)
        _through(client, requests, server)
        server.send_headers(stream_id, [(b":status", b"200"), (b"server", b"nginx/1.22.1")])
        server.send_data(stream_id, b"ok", end_stream=True)
        _, received = _through(server, responses, client)
        heads = [e for e in received if isinstance(e, h2.events.ResponseReceived)]
        assert heads[0].headers == [(b":status", b"200"), (b"server", b"nginx/1.22.1")]
    assert len(responses.decoder._table.dynamic_entries) == 0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", b"\x00\x01\x00\x00\x00\x00"),
        (b"\x00\x01\x00\x00\x10\x00", b"\x00\x01\x00\x00\x00\x00"),
        (b"\x00\x03\x00\x00\x00\x64\x00\x01\x00\x01\x00\x00",
         b"\x00\x03\x00\x00\x00\x64\x00\x01\x00\x00\x00\x00"),
        (b"\x00\x01\x00\x00", b"\x00\x01\x00\x00"),  # malformed: the receiver refuses it
    ],
)  # fmt: skip
def test_the_header_table_size_setting_is_set_to_zero_or_added(
    payload: bytes, expected: bytes
) -> None:
    frame = len(payload).to_bytes(3, "big") + b"\x04\x00\x00\x00\x00\x00" + payload
    rewritten = without_dynamic_table(frame)
    assert rewritten[9:] == expected
    assert int.from_bytes(rewritten[:3], "big") == len(expected)
    assert rewritten[3:9] == frame[3:9]
