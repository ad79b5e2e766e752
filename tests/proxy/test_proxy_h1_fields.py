"""Which fields the HTTP/1 core forwards (RFC 9110 7.6.1) and what they say (proxy/h1/fields.py)."""

from __future__ import annotations

import pytest

from proxy.h1 import FieldError, read_fields, trailer_fields


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    fields = read_fields(
        [
            (b"Host", b"a"),
            (b"Connection", b"keep-alive, X-Private"),
            (b"X-Private", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Content-Length", b"3"),
        ]
    )
    assert fields.forwarded == [(b"Host", b"a"), (b"Content-Length", b"3")]
    assert fields.host == b"a"
    assert fields.content_length == 3
    assert fields.upgrade is None
    assert fields.close is False


def test_framing_fields_survive_being_named_in_connection() -> None:
    fields = read_fields([(b"connection", b"content-length, host"), (b"content-length", b"1"),
                          (b"host", b"h")])  # fmt: skip
    assert fields.forwarded == [(b"content-length", b"1"), (b"host", b"h")]


def test_chunked_is_read_and_removed_other_codings_refused() -> None:
    fields = read_fields([(b"Transfer-Encoding", b"Chunked"), (b"x", b"y")])
    assert fields.chunked
    assert fields.forwarded == [(b"x", b"y")]
    with pytest.raises(FieldError, match="gzip"):
        read_fields([(b"transfer-encoding", b"gzip, chunked")])


def test_upgrade_needs_the_connection_token() -> None:
    fields = read_fields([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"x", b"y")])
    assert fields.upgrade == b"websocket"
    assert fields.forwarded == [(b"x", b"y")]
    alone = read_fields([(b"upgrade", b"websocket")])
    assert alone.upgrade is None
    assert alone.forwarded == []


def test_connection_close_expect_and_client_id_are_reported() -> None:
    fields = read_fields(
        [(b"connection", b"close"), (b"Expect", b"100-Continue"), (b"Meshlet-Client-Id", b"x")]
    )
    assert fields.close
    assert fields.expect_continue
    assert fields.client_id
    assert fields.forwarded == [(b"Expect", b"100-Continue"), (b"Meshlet-Client-Id", b"x")]


def test_two_hosts_are_refused() -> None:
    with pytest.raises(FieldError):
        read_fields([(b"host", b"a"), (b"Host", b"b")])


def test_trailers_lose_framing_and_hop_by_hop_fields() -> None:
    trailers = [(b"grpc-status", b"0"), (b"Content-Length", b"9"), (b"Connection", b"x"),
                (b"Transfer-Encoding", b"chunked")]  # fmt: skip
    assert trailer_fields(trailers) == [(b"grpc-status", b"0")]
