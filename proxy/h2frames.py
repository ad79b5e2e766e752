"""HTTP/2 frames the proxy writes itself (sans-IO), for the paired frame relay
(``proxy/h2relay.py``) and the per-stream endpoint (``proxy/h2peer.py``).

Header blocks are encoded as "literal without indexing, new name", no Huffman (RFC 7541 section
6.2.2): the receiver's dynamic table is never touched, so no encoder state has to stay in step
with it, and encoding costs a few byte joins (hpack's encoder with Huffman coding was 2.5x the
decode).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "PING_PAYLOAD",
    "BlockCache",
    "PREFACE",
    "encode_block",
    "error_response",
    "frame",
    "goaway",
    "header_frames",
    "ping",
    "rst_stream",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PING_PAYLOAD: Final = b"meshlet!"
"""The proxy's own PINGs carry this, so their acknowledgements are recognised."""

_HEADERS, _RST_STREAM, _PING, _GOAWAY, _CONTINUATION = 0x1, 0x3, 0x6, 0x7, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
_MIN_MAX_FRAME: Final = 16384  # every peer accepts frames this large (RFC 9113 section 4.2)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big")
    return head + payload


def _hpack_int(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (RFC 7541 section 5.1), as string lengths use."""
    if value < 0x7F:
        return bytes((value,))
    out = bytearray((0x7F,))
    value -= 0x7F
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """Every field as "literal without indexing, new name", no Huffman."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00" + _hpack_int(len(name)) + name + _hpack_int(len(value)) + value
    return bytes(out)


class BlockCache:
    """``encode_block`` remembering its last few small blocks, for one connection: a client's
    requests and a server's responses mostly repeat field for field (the decoder hands back the
    same byte strings for a repeated block), and hashing the fields is cheaper than encoding them
    again. Bounded: at most ``limit`` blocks of at most ``max_block`` bytes (emptied when full).
    One per connection, so whether a block was cached says nothing about other connections."""

    __slots__ = ("_blocks", "_limit", "_max_block")

    def __init__(self, limit: int = 16, max_block: int = 1024) -> None:
        self._blocks: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}
        self._limit = limit
        self._max_block = max_block

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        key = tuple(headers)
        block = self._blocks.get(key)
        if block is None:
            block = encode_block(headers)
            if len(block) <= self._max_block:
                if len(self._blocks) >= self._limit:
                    self._blocks.clear()
                self._blocks[key] = block
        return block


def header_frames(stream_id: int, end_stream: bool, block: bytes) -> bytes:
    """``block`` as HEADERS (+ CONTINUATION) frames no larger than every peer accepts."""
    chunks = [block[i : i + _MIN_MAX_FRAME] for i in range(0, len(block), _MIN_MAX_FRAME)]
    chunks = chunks or [b""]
    out = bytearray()
    for index, chunk in enumerate(chunks):
        kind = _HEADERS if index == 0 else _CONTINUATION
        flags = _END_STREAM if index == 0 and end_stream else 0
        if index == len(chunks) - 1:
            flags |= _END_HEADERS
        out += len(chunk).to_bytes(3, "big") + bytes((kind, flags))
        out += stream_id.to_bytes(4, "big") + chunk
    return bytes(out)


def ping() -> bytes:
    return frame(_PING, 0, 0, PING_PAYLOAD)


def goaway(last_stream_id: int, error_code: int = 0) -> bytes:
    return frame(_GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + error_code.to_bytes(4, "big"))


def rst_stream(stream_id: int, error_code: int) -> bytes:
    return frame(_RST_STREAM, 0, stream_id, error_code.to_bytes(4, "big"))


def _literal(name: bytes, value: bytes) -> bytes:
    # "Literal Header Field without Indexing — New Name" (RFC 7541 6.2.2), no Huffman: the
    # receiver's dynamic table is not touched. Lengths here are always < 127.
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


def error_response(stream_id: int, status: int, slug: bytes) -> bytes:
    """A complete response (HEADERS with END_STREAM) carrying the proxy's error."""
    block = (
        _literal(b":status", str(status).encode())
        + _literal(b"meshlet-proxy-error", slug)
        + _literal(b"content-length", b"0")
    )
    return frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, block)
