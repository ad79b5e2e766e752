"""Hop-by-hop header handling (RFC 9110 7.6.1)."""

from __future__ import annotations

from proxy.headers import forward_headers


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    forwarded = forward_headers(
        [
            (b"host", b"a"),
            (b"connection", b"keep-alive, X-Private"),
            (b"x-private", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"te", b"trailers"),
            (b"content-length", b"3"),
        ]
    )
    assert forwarded.headers == [(b"host", b"a"), (b"content-length", b"3")]
    assert forwarded.upgrade is None
    assert forwarded.close is False


def test_chunked_framing_is_recreated() -> None:
    forwarded = forward_headers([(b"transfer-encoding", b"gzip, chunked"), (b"x", b"y")])
    assert forwarded.headers == [(b"x", b"y"), (b"transfer-encoding", b"chunked")]


def test_upgrade_negotiation_is_passed_on() -> None:
    headers = [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"x", b"y")]
    forwarded = forward_headers(headers)
    assert forwarded.upgrade == b"websocket"
    assert forwarded.headers == [
        (b"x", b"y"),
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
    ]
    assert forward_headers(headers, allow_upgrade=False).headers == [(b"x", b"y")]


def test_upgrade_without_connection_token_is_dropped() -> None:
    forwarded = forward_headers([(b"upgrade", b"websocket")])
    assert forwarded.upgrade is None
    assert forwarded.headers == []


def test_connection_close_is_reported() -> None:
    assert forward_headers([(b"connection", b"close")]).close is True
