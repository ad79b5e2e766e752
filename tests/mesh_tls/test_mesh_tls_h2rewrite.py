"""The inbound HTTP/2 relay's request header rewrite (``meshlet-client-id``), sans-IO."""

from __future__ import annotations

import hpack

from proxy.h2relay import PREFACE, FrameScanner, RequestStarted
from proxy.mtls import inbound_request_headers

_HEADERS, _CONTINUATION, _END_STREAM, _END_HEADERS, _PADDED = 0x1, 0x9, 0x1, 0x4, 0x8


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def _request(path: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"db.shop:80"),
        (b":path", path),
        *extra,
    ]


def _rewrite(client_id: str | None) -> FrameScanner:
    def rewrite(headers: list[tuple[bytes, bytes]], starts: bool) -> list[tuple[bytes, bytes]]:
        return inbound_request_headers(headers, client_id if starts else None)

    return FrameScanner(from_client=True, rewrite=rewrite)


def _decode_blocks(data: bytes, decoder: hpack.Decoder) -> list[list[tuple[bytes, bytes]]]:
    blocks, block = [], b""
    for kind, flags, _, payload in _frames(data):
        assert kind in (_HEADERS, _CONTINUATION)
        assert not flags & _PADDED
        block += payload
        if flags & _END_HEADERS:
            blocks.append(list(decoder.decode(block, raw=True)))
            block = b""
    return blocks


def test_spoofed_client_id_replaced_across_dynamic_table_references() -> None:
    scanner = _rewrite("web.shop.serviceaccount.identity.meshlet.cluster.local")
    client = hpack.Encoder()  # indexes: the second block refers to the first one's entries
    spoof = (b"meshlet-client-id", b"evil")
    first = _frame(_HEADERS, _END_HEADERS | _END_STREAM, 1, client.encode(_request(b"/a", spoof)))
    second = _frame(_HEADERS, _END_HEADERS | _END_STREAM, 3, client.encode(_request(b"/a", spoof)))
    out, events = scanner.feed(PREFACE + first)
    assert out.startswith(PREFACE)
    assert [type(e) for e in events] == [RequestStarted]
    out2, _ = scanner.feed(second)
    upstream = hpack.Decoder()
    identity = (b"meshlet-client-id", b"web.shop.serviceaccount.identity.meshlet.cluster.local")
    assert _decode_blocks(out[len(PREFACE) :] + out2, upstream) == [
        _request(b"/a", identity),
        _request(b"/a", identity),
    ]
    assert [f[1] & _END_STREAM for f in _frames(out[len(PREFACE) :] + out2)] == [1, 1]


def test_plaintext_client_loses_the_header_and_trailers_get_none() -> None:
    scanner = _rewrite(None)
    client = hpack.Encoder()
    head = client.encode(_request(b"/upload", (b"MESHLET-CLIENT-ID", b"evil")))
    trailers = client.encode([(b"x-checksum", b"1"), (b"meshlet-client-id", b"evil")])
    out, _ = scanner.feed(
        PREFACE
        + _frame(_HEADERS, 0, 1, head[:5])
        + _frame(_CONTINUATION, _END_HEADERS, 1, head[5:])
        + _frame(_HEADERS, _END_HEADERS | _END_STREAM, 1, trailers)
    )
    assert _decode_blocks(out[len(PREFACE) :], hpack.Decoder()) == [
        _request(b"/upload"),
        [(b"x-checksum", b"1")],
    ]


def test_large_block_is_split_into_continuations() -> None:
    scanner = _rewrite("web")
    big = (b"x-big", b"v" * 40000)
    out, _ = scanner.feed(
        PREFACE + _frame(_HEADERS, _END_HEADERS, 5, hpack.Encoder().encode(_request(b"/", big)))
    )
    frames = _frames(out[len(PREFACE) :])
    assert [f[0] for f in frames] == [_HEADERS, _CONTINUATION, _CONTINUATION]
    assert all(len(f[3]) <= 16384 for f in frames)
    assert [f[1] & _END_HEADERS for f in frames] == [0, 0, _END_HEADERS]
    assert _decode_blocks(out[len(PREFACE) :], hpack.Decoder()) == [
        _request(b"/", big, (b"meshlet-client-id", b"web"))
    ]
