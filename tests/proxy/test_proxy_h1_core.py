"""The sans-IO HTTP/1 core (proxy/h1/) driven with bytes: events, splits, smuggling shapes."""

from __future__ import annotations

import pytest

from proxy.h1 import (
    CHUNKED,
    CLOSED,
    HEAD_LIMIT,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    End,
    Event,
    ParseError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    Truncated,
)
from proxy.h1.write import chunk, last_chunk, request_head, response_framing, response_head


def _summary(events: list[Event]) -> list[object]:
    """Events as comparable values, consecutive body pieces merged (splits move their edges)."""
    out: list[object] = []
    for event in events:
        if type(event) is bytes:
            if out and type(out[-1]) is bytes:
                out[-1] += event
            else:
                out.append(event)
        elif isinstance(event, RequestHead):
            fields = event.fields
            out.append(("request", event.method, event.target, event.version, event.framing,
                        fields.forwarded, fields.upgrade, event.keep_alive))  # fmt: skip
        elif isinstance(event, ResponseHead):
            out.append(("response", event.status, event.reason, event.framing,
                        event.fields.forwarded, event.keep_alive))  # fmt: skip
        elif isinstance(event, End):
            out.append(("end", event.trailers))
        else:
            out.append(event)
    return out


def _drain(reader: RequestReader | ResponseReader) -> list[Event]:
    events: list[Event] = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


def _requests(*pieces: bytes) -> list[object]:
    reader = RequestReader()
    events: list[Event] = []
    for piece in pieces:
        reader.feed(piece)
        events += _drain(reader)
    return _summary(events)


def _responses(*pieces: bytes, head_request: bool = False) -> list[object]:
    reader = ResponseReader()
    reader.start(head_request=head_request)
    events: list[Event] = []
    for piece in pieces:
        reader.feed(piece)
        events += _drain(reader)
    return _summary(events)


def _drip(reader: RequestReader, byte: bytes) -> ParseError:
    """Feed 1 KiB pieces of ``byte`` until the reader refuses (at most 64 MiB)."""
    for _ in range(HEAD_LIMIT):
        reader.feed(byte * 1024)
        try:
            _drain(reader)
        except ParseError as exc:
            return exc
    raise AssertionError("never refused")


def _refused(*pieces: bytes) -> ParseError:
    with pytest.raises(ParseError) as caught:
        _requests(*pieces)
    return caught.value


PIPELINE = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
    b"Keep-Alive: 5\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n"
    b"POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\nTE: gone\r\n\r\n"
    b"PUT /p HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\nbody"
    b"GET /old HTTP/1.0\r\n\r\n"
)
PIPELINE_EVENTS = [
    ("request", b"GET", b"/a?x=1", b"1.1", NO_BODY, [(b"Host", b"app"), (b"X-Kept", b"yes")],
     None, True),
    ("end", []),
    ("request", b"POST", b"/up", b"1.1", CHUNKED, [(b"Host", b"app")], None, True),
    b"hello world",
    ("end", [(b"X-Sum", b"11")]),
    ("request", b"PUT", b"/p", b"1.1", LENGTH, [(b"Host", b"app"), (b"Content-Length", b"4")],
     None, True),
    b"body",
    ("end", []),
    ("request", b"GET", b"/old", b"1.0", NO_BODY, [], None, False),
    ("end", []),
]  # fmt: skip


def test_pipelined_requests_in_one_read() -> None:
    assert _requests(PIPELINE) == PIPELINE_EVENTS


def test_requests_split_at_every_byte_boundary() -> None:
    for cut in range(1, len(PIPELINE)):
        assert _requests(PIPELINE[:cut], PIPELINE[cut:]) == PIPELINE_EVENTS, cut


def test_requests_fed_one_byte_at_a_time() -> None:
    assert _requests(*[PIPELINE[i : i + 1] for i in range(len(PIPELINE))]) == PIPELINE_EVENTS


def test_end_of_stream_between_and_inside_requests() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    reader.feed(b"")
    assert _summary(_drain(reader))[-1] is CLOSED
    reader = RequestReader()
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    reader.feed(b"")
    with pytest.raises(Truncated):
        _drain(reader)


def test_an_error_after_complete_requests_comes_after_them() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost a\r\n\r\n")
    assert isinstance(reader.next_event(), RequestHead)
    assert isinstance(reader.next_event(), End)
    with pytest.raises(ParseError):
        reader.next_event()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, id="cl-and-te"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Length: 3\r\n\r\n0\r\n\r\n", 400, id="te-and-cl"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                     b"Content-Length: 3\r\n\r\nabc", 400, id="duplicate-cl"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400,
                     id="cl-list"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400,
                     id="cl-sign"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                     400, id="chunk-size-not-hex"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
                     400, id="chunk-size-negative"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"10000000000000000\r\n", 400, id="chunk-size-overflow"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabcX\r\n", 400, id="chunk-longer-than-size"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                     400, id="te-not-only-chunked"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, id="te-twice"),
        pytest.param(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                     id="te-in-http10"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: folded\r\n  value\r\n\r\n", 400,
                     id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n", 400,
                     id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", 400, id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, id="bare-cr"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, id="nul-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
        pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, id="http2-version"),
        pytest.param(b"GET / HTTP/0.9\r\n\r\n", 505, id="http09-version"),
        pytest.param(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405, id="connect"),
        pytest.param(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="space-in-target"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"y" * HEAD_LIMIT + b"\r\n\r\n",
                     431, id="oversize-field"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * (HEAD_LIMIT // 6 + 1)
                     + b"\r\n", 431, id="oversize-head"),
        pytest.param(b"GET /" + b"a" * HEAD_LIMIT + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431,
                     id="oversize-target"),
    ],
)  # fmt: skip
def test_smuggling_and_malformed_requests_are_refused(request_bytes: bytes, status: int) -> None:
    error = _refused(request_bytes)
    assert error.status == status
    assert str(error)  # a reason for the 400 body and the log
    for cut in (1, len(request_bytes) // 2, len(request_bytes) - 1):  # however it arrives
        assert _refused(request_bytes[:cut], request_bytes[cut:]).status == status


def test_a_field_dripped_without_end_is_refused_before_it_grows() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    assert _drip(reader, b"y").status == 431  # 1 KiB at a time, never a CRLF


def test_chunk_extensions_without_end_are_refused() -> None:
    reader = RequestReader()
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;")
    assert _drip(reader, b"e").status == 431


def test_upgrade_keeps_the_bytes_after_the_head() -> None:
    reader = RequestReader()
    reader.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: k\r\n\r\n\x81\x05hello")  # fmt: skip
    head, end = _drain(reader)
    assert isinstance(head, RequestHead)
    assert head.fields.upgrade == b"websocket"
    assert head.fields.forwarded == [(b"Host", b"a"), (b"Sec-WebSocket-Key", b"k")]
    assert isinstance(end, End)
    assert reader.switched
    assert reader.rest == b"\x81\x05hello"


def test_upgrade_with_a_body_is_forwarded_as_a_plain_request() -> None:
    message = (
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAA\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    expected = [
        ("request", b"POST", b"/", b"1.1", LENGTH, [(b"Host", b"a"), (b"Content-Length", b"5")],
         None, True),
        b"hello",
        ("end", []),
        ("request", b"GET", b"/next", b"1.1", NO_BODY, [(b"Host", b"a")], None, True),
        ("end", []),
    ]  # fmt: skip
    for cut in range(1, len(message)):
        assert _requests(message[:cut], message[cut:]) == expected, cut


RESPONSES = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
)


def test_responses_split_at_every_byte_boundary() -> None:
    expected = [
        ("response", 100, b"Continue", NO_BODY, [], True),
        ("end", []),
        ("response", 200, b"OK", LENGTH, [(b"Content-Length", b"5")], True),
        b"hello",
        ("end", []),
    ]
    for cut in range(1, len(RESPONSES)):
        assert _responses(RESPONSES[:cut], RESPONSES[cut:]) == expected, cut


def test_chunked_response_with_trailers() -> None:
    events = _responses(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"
    )
    assert events == [
        ("response", 200, b"OK", CHUNKED, [], True),
        b"abc",
        ("end", [(b"grpc-status", b"0")]),
    ]


def test_response_to_head_has_no_body_and_the_connection_is_reused() -> None:
    reader = ResponseReader()
    reader.start(head_request=True)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert _summary(_drain(reader)) == [
        ("response", 200, b"OK", NO_BODY, [(b"Content-Length", b"1000")], True),
        ("end", []),
    ]
    reader.start_next_cycle()
    reader.start(head_request=False)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert _summary(_drain(reader))[1:] == [b"ok", ("end", [])]
    assert reader.responses == 1


def test_bytes_after_a_response_to_head_are_an_error() -> None:
    with pytest.raises(ParseError):
        _responses(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", head_request=True)


@pytest.mark.parametrize("status", [204, 304])
def test_responses_without_body(status: int) -> None:
    events = _responses(b"HTTP/1.1 %d X\r\n\r\n" % status)
    assert events == [("response", status, b"X", NO_BODY, [], True), ("end", [])]


def test_response_delimited_by_close() -> None:
    events = _responses(b"HTTP/1.1 200 OK\r\nServer: s\r\n\r\nsome ", b"bytes", b"")
    assert events == [
        ("response", 200, b"OK", UNTIL_CLOSE, [(b"Server", b"s")], False),
        b"some bytes",
        ("end", []),
        CLOSED,
    ]


def test_truncated_response_body() -> None:
    with pytest.raises(Truncated):
        _responses(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"")
    with pytest.raises(Truncated):
        _responses(b"HTTP/1.1 200 OK\r\nContent-", b"")


def test_connection_close_and_http10_responses_are_not_kept_alive() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert _responses(closing)[0][-1] is False
    assert _responses(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[0][-1] is False


def test_switching_protocols_keeps_the_rest() -> None:
    reader = ResponseReader()
    reader.start(head_request=False)
    reader.feed(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                b"Upgrade: websocket\r\n\r\n\x81\x02hi")  # fmt: skip
    head, end = _drain(reader)
    assert isinstance(end, End)
    assert isinstance(head, ResponseHead)
    assert head.status == 101
    assert head.fields.upgrade == b"websocket"
    assert reader.switched
    assert reader.rest == b"\x81\x02hi"


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", id="te-gzip"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
                     id="duplicate-cl"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
                     id="cl-and-te"),
        pytest.param(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="version"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", id="obs-fold"),
        pytest.param(b"SSH-2.0-OpenSSH\r\n", id="not-http"),
    ],
)  # fmt: skip
def test_invalid_responses_are_refused(response: bytes) -> None:
    with pytest.raises(ParseError):
        _responses(response)


def test_heads_are_written_from_fields() -> None:
    fields = [(b"Host", b"a"), (b"X", b"1")]
    assert request_head(b"GET", b"/p", fields) == b"GET /p HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"
    assert response_head(200, b"", []) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert response_head(299, b"Fine", []) == b"HTTP/1.1 299 Fine\r\n\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert last_chunk([]) == b"0\r\n\r\n"
    assert last_chunk([(b"T", b"1")]) == b"0\r\nT: 1\r\n\r\n"


def test_response_framing_towards_the_client() -> None:
    assert response_framing(LENGTH, client_http11=True) == LENGTH
    assert response_framing(UNTIL_CLOSE, client_http11=True) == CHUNKED
    assert response_framing(CHUNKED, client_http11=False) == UNTIL_CLOSE
    assert response_framing(NO_BODY, client_http11=False) == NO_BODY


def test_written_request_reads_back_the_same() -> None:
    """What the proxy writes is what it would accept (round trip through the reader)."""
    original = _requests(PIPELINE)
    reader = RequestReader()
    events: list[Event] = []
    reader.feed(PIPELINE)
    out = b""
    for event in _drain(reader):
        events.append(event)
        if isinstance(event, RequestHead):
            current = event
            headers = list(event.fields.forwarded)
            if event.framing == CHUNKED:
                headers.append((b"transfer-encoding", b"chunked"))
            if event.fields.host is None:
                headers.append((b"host", b"h"))
            out += request_head(event.method, event.target, headers)
        elif type(event) is bytes:
            out += chunk(event) if current.framing == CHUNKED else event
        elif isinstance(event, End) and current.framing == CHUNKED:
            out += last_chunk(event.trailers)
    again = _requests(out)
    assert [e[:4] if isinstance(e, tuple) else e for e in again] == [
        (e[:4] if e[0] != "request" or e[3] != b"1.0" else (*e[:3], b"1.1"))
        if isinstance(e, tuple)
        else e
        for e in original
    ]
