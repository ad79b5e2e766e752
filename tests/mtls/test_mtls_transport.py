"""The transport header of opaque ports, sans-IO and read off a stream (the running proxy's
use of it, mTLS to the peer's proxy port, is tests/mesh_tls)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from proxy.mtls.transport import (
    Session,
    TransportHeader,
    TransportHeaderError,
    encode_transport_header,
    parse_transport_header,
    read_transport_header,
)


@pytest.mark.parametrize(("session", "size"), [(Session.OPAQUE, 24), (Session.HTTP1_OVER_H2, 28)])
def test_header_round_trip_and_partial_input(session: Session, size: int) -> None:
    header = encode_transport_header(5432, session)
    assert len(header) == size
    assert parse_transport_header(header + b"rest") == (TransportHeader(5432, session), b"rest")
    for end in range(len(header)):
        assert parse_transport_header(header[:end]) is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
        pytest.param(b"\x00meshlet.io/other", id="other-magic"),
        pytest.param(b"\x00meshlet.io/opaque/2\x00\x00\x50\n", id="other-version"),
        pytest.param(b"\x00meshlet.io/h1-over-h2/1\x00\x00\x50x", id="h1-no-newline"),
        pytest.param(encode_transport_header(80)[:-3] + b"\x00\x00\n", id="port-0"),
        pytest.param(encode_transport_header(80)[:-1] + b"x", id="no-newline"),
    ],
)
def test_bad_headers_are_refused_early(data: bytes) -> None:
    with pytest.raises(TransportHeaderError):
        parse_transport_header(data)
    with pytest.raises(ValueError, match="out of range"):
        encode_transport_header(0)


@pytest.mark.trio
async def test_read_transport_header_from_a_stream() -> None:
    header = encode_transport_header(3306)
    chunks = [header[:5], header[5:] + b"banner", b""]

    async def receive() -> bytes:
        return chunks.pop(0)

    assert await read_transport_header(receive, b"", timeout=5) == (
        TransportHeader(3306),
        b"banner",
    )
    chunks[:] = [header[:10], b""]
    with pytest.raises(TransportHeaderError, match="no complete transport header"):
        await read_transport_header(receive, b"", timeout=5)
    with pytest.raises(TransportHeaderError, match="does not start"):
        await read_transport_header(receive, b"GET / HTTP/1.1", timeout=5)


@pytest.mark.trio
async def test_read_transport_header_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def receive() -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    with pytest.raises(TransportHeaderError):
        await read_transport_header(receive, b"\x00meshlet", timeout=10)
