"""The sans-IO conversions of the HTTP/1-over-HTTP/2 gateway (``proxy/h1h2convert.py``)."""

from __future__ import annotations

import pytest

from meshlet.names import workload_identity
from proxy.h1 import CHUNKED, LENGTH, NO_BODY, ResponseHead, ResponseReader
from proxy.h1h2convert import (
    RejectedStream,
    body_bytes,
    body_end,
    response_has_body,
    response_headers,
    stream_request,
)

WEB = workload_identity("web", "shop")
BASE = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"web.shop:8080"),
    (b":path", b"/a?b=c"),
    (b"meshlet-orig-proto", b"HTTP/1.1"),
]


def test_a_get_becomes_an_http11_request_with_host_first() -> None:
    headers = [*BASE, (b"accept", b"*/*"), (b"x-b", b"1"), (b"x-b", b"2")]
    request = stream_request(headers, True, WEB)
    assert request.framing == NO_BODY
    assert request.head == (
        b"GET /a?b=c HTTP/1.1\r\n"
        b"host: web.shop:8080\r\n"
        b"accept: */*\r\n"
        b"x-b: 1\r\n"
        b"x-b: 2\r\n"
        b"meshlet-client-id: " + WEB.encode() + b"\r\n"
        b"\r\n"
    )


def test_hop_by_hop_host_and_spoofed_identity_fields_are_not_forwarded() -> None:
    headers = [
        *BASE,
        (b"host", b"other"),
        (b"connection", b"x-hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"5"),
        (b"te", b"trailers"),
        (b"upgrade", b"websocket"),
        (b"transfer-encoding", b"chunked"),
        (b"meshlet-client-id", b"forged"),
        (b"x-end", b"kept"),
    ]
    head = stream_request(headers, True, None).head
    assert head == b"GET /a?b=c HTTP/1.1\r\nhost: web.shop:8080\r\nx-end: kept\r\n\r\n"


def test_body_framing_follows_content_length_or_becomes_chunked() -> None:
    sized = stream_request([*BASE, (b"content-length", b"5")], False, None)
    assert (sized.framing, sized.content_length) == (LENGTH, 5)
    assert b"content-length: 5\r\n" in sized.head
    assert b"transfer-encoding" not in sized.head
    assert body_bytes(sized, b"hello") == b"hello"
    assert body_end(sized) == b""
    streamed = stream_request(BASE, False, None)
    assert streamed.framing == CHUNKED
    assert streamed.head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert body_bytes(streamed, b"hello") == b"5\r\nhello\r\n"
    assert body_bytes(streamed, b"") == b""  # an empty DATA frame is no last chunk
    assert body_end(streamed) == b"0\r\n\r\n"
    empty = stream_request([*BASE, (b"content-length", b"0")], True, None)
    assert empty.framing == NO_BODY


def test_http10_streams_keep_their_version() -> None:
    headers = [(n, b"HTTP/1.0" if n == b"meshlet-orig-proto" else v) for n, v in BASE]
    assert stream_request(headers, True, None).head.startswith(b"GET /a?b=c HTTP/1.0\r\n")
    no_authority = [(n, v) for n, v in headers if n != b":authority"]
    assert stream_request(no_authority, True, None).head == b"GET /a?b=c HTTP/1.0\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "end_stream", "reason"),
    [
        ([h for h in BASE if h[0] != b"meshlet-orig-proto"], True, "no meshlet-orig-proto"),
        ([*BASE[:4], (b"meshlet-orig-proto", b"HTTP/2")], True, "is not served"),
        ([h for h in BASE if h[0] != b":path"], True, ":path"),
        ([h for h in BASE if h[0] != b":method"], True, ":method"),
        ([*BASE, (b"x-evil", b"a\r\nx-injected: 1")], True, "invalid field"),
        ([*BASE, (b"x evil", b"1")], True, "invalid field"),
        ([(b":path", b"/a HTTP/1.1\r\nx: y") if n == b":path" else (n, v) for n, v in BASE],
         True, ":path"),
        ([(b":method", b"G T") if n == b":method" else (n, v) for n, v in BASE], True, ":method"),
        ([(b":method", b"CONNECT") if n == b":method" else (n, v) for n, v in BASE],
         True, "CONNECT"),
        ([(b":authority", b"a b") if n == b":authority" else (n, v) for n, v in BASE],
         True, ":authority"),
        ([*BASE, (b":protocol", b"websocket")], True, "pseudo-header"),
        ([*BASE, (b"content-length", b"-1")], False, "content-length"),
        ([*BASE, (b"content-length", b"1"), (b"content-length", b"2")], False, "conflicting"),
        ([*BASE, (b"content-length", b"3")], True, "does not carry"),
    ],
)  # fmt: skip
def test_streams_that_cannot_be_http1_requests_are_rejected(
    headers: list[tuple[bytes, bytes]], end_stream: bool, reason: str
) -> None:
    with pytest.raises(RejectedStream, match=reason):
        stream_request(headers, end_stream, None)


def _response(raw: bytes, *, head_request: bool = False) -> ResponseHead:
    reader = ResponseReader()
    reader.start(head_request=head_request)
    reader.feed(raw)
    event = reader.next_event()
    assert isinstance(event, ResponseHead)
    return event


def test_responses_lose_hop_by_hop_fields_and_keep_content_length() -> None:
    head = _response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok"
    )
    assert response_headers(head) == [
        (b":status", b"200"),
        (b"content-length", b"2"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    assert response_has_body(head)
    chunked = _response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert response_headers(chunked) == [(b":status", b"200")]


@pytest.mark.parametrize(
    ("raw", "head_request"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", True),
    ],
)
def test_responses_without_a_body(raw: bytes, head_request: bool) -> None:
    assert not response_has_body(_response(raw, head_request=head_request))
