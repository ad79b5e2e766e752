"""The sans-IO half of the HTTP/1 upgrade (``proxy/h1upgradeconvert.py``): which requests and
endpoints upgrade, HTTP/1 request heads as HTTP/2 fields, HTTP/2 response fields as HTTP/1."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from proxy.discovery import Endpoint
from proxy.h1 import LENGTH, NO_BODY, UNTIL_CLOSE, RequestHead, RequestReader, read_fields
from proxy.h1upgradeconvert import (
    CONNECT_METHOD,
    ENDPOINT_NOT_MESHED,
    EXPECT_CONTINUE,
    NO_H2_HINT,
    NO_LOCAL_IDENTITY,
    PROTOCOL_UPGRADE,
    REFUSALS,
    SETTING_OFF,
    ResponseHeadError,
    endpoint_refusal,
    h1_response_head,
    h2_request_headers,
    request_refusal,
)


def _head(raw: bytes) -> RequestHead:
    reader = RequestReader()
    reader.feed(raw)
    event = reader.next_event()
    assert isinstance(event, RequestHead)
    return event


def _endpoint(identity: str | None = "db.id", hint: str | None = "h2") -> Endpoint:
    return Endpoint("10.0.0.1", 8080, 1, identity, hint, MappingProxyType({}))


@pytest.mark.parametrize(
    ("enabled", "local", "endpoint", "reason"),
    [
        pytest.param(True, True, _endpoint(), None, id="upgrade"),
        pytest.param(False, True, _endpoint(), SETTING_OFF, id="setting-off"),
        pytest.param(True, False, _endpoint(), NO_LOCAL_IDENTITY, id="no-local-identity"),
        pytest.param(True, True, _endpoint(identity=None), ENDPOINT_NOT_MESHED, id="unmeshed"),
        pytest.param(True, True, _endpoint(hint=None), NO_H2_HINT, id="no-hint"),
        pytest.param(True, True, _endpoint(hint="opaque"), NO_H2_HINT, id="opaque-hint"),
    ],
)
def test_endpoint_refusal(
    enabled: bool, local: bool, endpoint: Endpoint, reason: str | None
) -> None:
    assert endpoint_refusal(enabled=enabled, local_identity=local, endpoint=endpoint) == reason
    assert reason is None or reason in REFUSALS


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None, id="get"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            EXPECT_CONTINUE,
            id="expect-continue",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            PROTOCOL_UPGRADE,
            id="websocket",
        ),
    ],
)
def test_request_refusal(raw: bytes, reason: str | None) -> None:
    assert request_refusal(_head(raw)) == reason


def test_connect_is_never_upgraded() -> None:
    """The reader refuses CONNECT today (405); the upgrade would refuse it anyway."""
    fields = read_fields([(b"Host", b"a:443")])
    head = RequestHead(b"CONNECT", b"a:443", b"1.1", fields, NO_BODY)
    assert request_refusal(head) == CONNECT_METHOD


def test_request_fields_in_order_without_hop_by_hop_ones() -> None:
    head = _head(
        b"POST /p?q=1 HTTP/1.1\r\nX-First: 1\r\nHost: web:80\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: gone\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\n"
        b"Content-Length: 3\r\nMeshlet-Orig-Proto: HTTP/9\r\nX-Last: 2\r\n\r\n"
    )
    assert h2_request_headers(head, b"fallback") == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"web:80"),
        (b":path", b"/p?q=1"),
        (b"x-first", b"1"),
        (b"content-length", b"3"),
        (b"x-last", b"2"),
        (b"meshlet-orig-proto", b"HTTP/1.1"),
    ]


def test_chunked_request_loses_its_transfer_encoding() -> None:
    head = _head(b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    names = [name for name, _ in h2_request_headers(head, b"")]
    assert b"transfer-encoding" not in names
    assert b"content-length" not in names


@pytest.mark.parametrize(
    ("raw", "authority", "path"),
    [
        pytest.param(b"GET http://abs:81/x?y HTTP/1.0\r\n\r\n", b"abs:81", b"/x?y", id="absolute"),
        pytest.param(b"GET http://abs HTTP/1.0\r\n\r\n", b"abs", b"/", id="absolute-no-path"),
        pytest.param(b"GET http://abs?y HTTP/1.0\r\n\r\n", b"abs", b"/?y", id="absolute-query"),
        pytest.param(
            b"GET http://abs/x HTTP/1.1\r\nHost: host\r\n\r\n", b"host", b"/x", id="host-first"
        ),
        pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", b"h", b"*", id="asterisk"),
        pytest.param(b"GET /old HTTP/1.0\r\n\r\n", b"svc:8080", b"/old", id="http10-no-host"),
    ],
)
def test_pseudo_headers(raw: bytes, authority: bytes, path: bytes) -> None:
    headers = dict(h2_request_headers(_head(raw), b"svc:8080"))
    assert headers[b":authority"] == authority
    assert headers[b":path"] == path


def test_http10_says_so() -> None:
    headers = dict(h2_request_headers(_head(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"), b""))
    assert headers[b"meshlet-orig-proto"] == b"HTTP/1.0"


def test_response_head_keeps_end_to_end_fields_and_length() -> None:
    response = h1_response_head(
        [
            (b":status", b"201"),
            (b"x-a", b"1"),
            (b"connection", b"close"),
            (b"keep-alive", b"5"),
            (b"content-length", b"10"),
        ],
        head_request=False,
    )
    assert response is not None
    assert response.status == 201
    assert response.framing == LENGTH
    assert response.fields.forwarded == [(b"x-a", b"1"), (b"content-length", b"10")]


@pytest.mark.parametrize(
    ("status", "length", "head_request", "framing"),
    [
        pytest.param(b"200", None, False, UNTIL_CLOSE, id="no-length"),
        pytest.param(b"200", b"5", True, NO_BODY, id="head"),
        pytest.param(b"204", None, False, NO_BODY, id="204"),
        pytest.param(b"304", b"5", False, NO_BODY, id="304"),
    ],
)
def test_response_framing(
    status: bytes, length: bytes | None, head_request: bool, framing: int
) -> None:
    headers = [(b":status", status)]
    if length is not None:
        headers.append((b"content-length", length))
    response = h1_response_head(headers, head_request=head_request)
    assert response is not None
    assert response.framing == framing


def test_interim_answers_are_dropped() -> None:
    assert h1_response_head([(b":status", b"103")], head_request=False) is None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"x", b"1")], id="no-status"),
        pytest.param([(b":status", b"2000")], id="long-status"),
        pytest.param([(b":status", b"099")], id="low-status"),
        pytest.param([(b":status", b"101")], id="switching"),
        pytest.param([(b":status", b"200"), (b"content-length", b"-1")], id="bad-length"),
        # What would split or corrupt the HTTP/1 head the client reads (RFC 9113 8.2.1: a
        # malformed response): CR, LF or NUL in a value, a name that is no token, and two
        # different lengths (which one would the client believe?).
        pytest.param([(b":status", b"200"), (b"x-a", b"1\r\nset-cookie: a=b")], id="crlf-value"),
        pytest.param([(b":status", b"200"), (b"x-a", b"1\nx-b: 2")], id="lf-value"),
        pytest.param([(b":status", b"200"), (b"x-a", b"1\x002")], id="nul-value"),
        pytest.param([(b":status", b"200"), (b"x-a: 1\r\nx-b", b"2")], id="crlf-name"),
        pytest.param([(b":status", b"200"), (b"x a", b"1")], id="space-name"),
        pytest.param([(b":status", b"200"), (b"", b"1")], id="empty-name"),
        pytest.param(
            [(b":status", b"200"), (b"content-length", b"5"), (b"content-length", b"6")],
            id="two-lengths",
        ),
    ],
)
def test_bad_responses_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ResponseHeadError):
        h1_response_head(headers, head_request=False)
