"""HTTP/2 relayed frame by frame between a paired client and upstream connection (sans-IO).

Theory of operation. The proxy pairs every HTTP/2 client connection with one upstream connection,
so the two peers can talk to each other almost directly: stream ids, SETTINGS, WINDOW_UPDATE,
RST_STREAM, PING and GOAWAY pass through unchanged, and HEADERS blocks are forwarded byte for
byte, which keeps the two HPACK contexts identical without re-encoding. Flow control is therefore
end to end by construction: the proxy holds no more than one read buffer per direction, and a
slow reader slows its writer through the peers' own windows.

What the relay adds is observation and a few frames of its own, always at frame boundaries:

- every header block (HEADERS, CONTINUATION, PUSH_PROMISE) is decoded with an HPACK decoder per
  direction (required anyway to follow the compression state) to produce metrics events:
  ``RequestStarted`` (``:authority``), ``ResponseStarted`` (``:status``), ``ResponseEnded``
  (with ``grpc-status`` from trailers) and ``StreamReset``;
- ``ping``, ``goaway``, ``rst_stream`` and ``error_response`` (``proxy/h2frames.py``, re-exported
  here) build frames the shell injects;
  PING acknowledgements carrying the proxy's own payload are consumed, not forwarded;
- an injected response uses only "literal without indexing" HPACK representations, which leave
  the receiver's dynamic table untouched, so the two HPACK contexts stay in step;
- every SETTINGS frame is forwarded with ``SETTINGS_HEADER_TABLE_SIZE`` 0 (added when absent), so
  neither encoder keeps a dynamic table: a server that indexes fields such as ``date`` or
  ``server`` in every response (nginx does) would otherwise change the table with each block and
  defeat the decoder's block cache (``proxy/hpackcache.py``), making the relay decode every
  response in Python. Lowering a peer's announced limit is always safe: the encoder signals the
  new size at the start of its next block (RFC 7541 section 4.2) and the real decoder, which
  allowed more, follows it. The cost is a few dozen bytes per header block on the wire.

An inbound relay passes ``rewrite`` to the client side's scanner (``meshlet-client-id``: any
copy the client sent is removed, the identity it proved over mTLS added). Request header blocks
are then re-encoded rather than forwarded: every block of that direction, so the upstream's HPACK
decoder follows one encoder only (ours, literals without indexing: its dynamic table stays
empty), and re-framed as HEADERS + CONTINUATION without padding or priority.

DATA frames are forwarded as their bytes arrive; any other frame is forwarded once complete
(they are small: at most the peer's SETTINGS_MAX_FRAME_SIZE, capped here at ``MAX_FRAME``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import hpack

from proxy.h2frames import (
    PING_PAYLOAD,
    PREFACE,
    BlockCache,
    error_response,
    goaway,
    header_frames,
    ping,
    rst_stream,
)
from proxy.hpackcache import CachingDecoder

__all__ = [
    "MAX_FRAME",
    "PREFACE",
    "Event",
    "FrameScanner",
    "GoAway",
    "HeaderRewrite",
    "RelayError",
    "RequestStarted",
    "ResponseEnded",
    "ResponseStarted",
    "Settings",
    "StreamReset",
    "error_response",
    "goaway",
    "ping",
    "rst_stream",
    "without_dynamic_table",
]

MAX_FRAME: Final = 1 << 20  # a non-DATA frame larger than this is not worth buffering
_DATA, _HEADERS, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _CONTINUATION = 0x5, 0x6, 0x7, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_HEADER_TABLE_SIZE: Final = 0x1
_NO_TABLE: Final = b"\x00\x01\x00\x00\x00\x00"  # SETTINGS_HEADER_TABLE_SIZE = 0


HeaderRewrite = Callable[[list[tuple[bytes, bytes]], bool], list[tuple[bytes, bytes]]]
"""``(headers, starts_request) -> headers`` to forward instead (request blocks and trailers)."""


class RelayError(Exception):
    """A peer broke HTTP/2 framing or header compression; the pair must close."""


@dataclass(frozen=True, slots=True)
class RequestStarted:
    stream_id: int
    authority: bytes
    end_stream: bool
    # For the tap (docs/tap.md); decoded with the block anyway, so they cost nothing extra.
    method: bytes = field(default=b"", compare=False)
    path: bytes = field(default=b"", compare=False)
    scheme: bytes = field(default=b"", compare=False)


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    stream_id: int
    status: int
    end_stream: bool
    grpc_status: int | None


@dataclass(frozen=True, slots=True)
class ResponseEnded:
    stream_id: int
    grpc_status: int | None


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    by_client: bool


@dataclass(frozen=True, slots=True)
class GoAway:
    last_stream_id: int


@dataclass(frozen=True, slots=True)
class Settings:
    header_table_size: int | None


Event = RequestStarted | ResponseStarted | ResponseEnded | StreamReset | GoAway | Settings


class FrameScanner:
    """One direction of a relayed connection: bytes in, (bytes to forward, events) out."""

    def __init__(self, *, from_client: bool, rewrite: HeaderRewrite | None = None) -> None:
        self.from_client = from_client
        self.decoder = CachingDecoder()
        self.rewrite = rewrite if from_client else None
        self._preface_left = len(PREFACE) if from_client else 0
        self._buffer = bytearray()  # an incomplete frame header or non-DATA frame
        self._data_left = 0  # payload bytes of the DATA frame being forwarded
        self._block = bytearray()  # header block being collected (HEADERS + CONTINUATION)
        self._block_stream = 0
        self._block_flags = 0
        self._block_kind = _HEADERS
        self._in_block = False
        self._started: set[int] = set()  # streams whose response head was seen (upstream side)
        self._blocks = BlockCache()  # rewritten request blocks, encoded
        self.injected: list[bytes] = []  # frames to send after the current frame completes

    @property
    def at_boundary(self) -> bool:
        return self._data_left == 0 and not self._buffer and self._preface_left == 0

    def feed(self, data: bytes) -> tuple[bytes, list[Event]]:
        """Consume ``data``; return the bytes to forward (frames, plus injections at
        boundaries) and the events seen."""
        out = bytearray()
        events: list[Event] = []
        view = self._take_preface(memoryview(data), out)
        while view:
            if self._data_left:
                taken = min(self._data_left, len(view))
                out += view[:taken]
                view = view[taken:]
                self._data_left -= taken
                if self._data_left == 0:
                    self._flush_injected(out)
                continue
            if len(self._buffer) < 9:
                need = 9 - len(self._buffer)
                self._buffer += view[:need]
                view = view[need:]
                if len(self._buffer) < 9:
                    break
            length = int.from_bytes(self._buffer[:3], "big")
            kind = self._buffer[3]
            if kind == _DATA:
                self._start_data(length, out, events)
                continue
            if length > MAX_FRAME:
                raise RelayError(f"a {length}-byte control frame is too large")
            missing = 9 + length - len(self._buffer)
            self._buffer += view[:missing]
            view = view[missing:]
            if len(self._buffer) < 9 + length:
                break
            frame = bytes(self._buffer)
            self._buffer.clear()
            if kind == _SETTINGS and not frame[4] & _ACK:
                frame = without_dynamic_table(frame)
            if self._inspect(frame, kind, events):
                out += frame
            self._flush_injected(out)
        if self.at_boundary:
            self._flush_injected(out)
        return bytes(out), events

    def _take_preface(self, view: memoryview, out: bytearray) -> memoryview:
        if not self._preface_left:
            return view
        taken = min(self._preface_left, len(view))
        expected = PREFACE[len(PREFACE) - self._preface_left :][:taken]
        if bytes(view[:taken]) != expected:
            raise RelayError("the client did not send the HTTP/2 preface")
        out += view[:taken]
        self._preface_left -= taken
        return view[taken:]

    def _start_data(self, length: int, out: bytearray, events: list[Event]) -> None:
        flags = self._buffer[4]
        if self._in_block:
            raise RelayError("a DATA frame interrupted a header block")
        if flags & _END_STREAM and not self.from_client:
            stream_id = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            events.append(ResponseEnded(stream_id, None))
        out += self._buffer
        self._buffer.clear()
        self._data_left = length
        if length == 0:
            self._flush_injected(out)

    def inject(self, frame: bytes) -> bytes:
        """``frame`` now if at a frame boundary (returned), else after the current frame."""
        if self.at_boundary:
            return frame
        self.injected.append(frame)
        return b""

    def _flush_injected(self, out: bytearray) -> None:
        if self.injected:
            for frame in self.injected:
                out += frame
            self.injected.clear()

    def _inspect(self, frame: bytes, kind: int, events: list[Event]) -> bool:
        """Decode what must be decoded; ``False`` to drop the frame (our own PING's ACK)."""
        flags = frame[4]
        stream_id = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        payload = memoryview(frame)[9:]
        if kind in (_HEADERS, _PUSH_PROMISE):
            if self._in_block:
                raise RelayError("a header block was interrupted")
            self._in_block = True
            self._block_stream, self._block_flags, self._block_kind = stream_id, flags, kind
            self._block += _fragment(payload, flags, kind)
            if flags & _END_HEADERS:
                self._end_block(events)
            return self.rewrite is None
        elif kind == _CONTINUATION:
            if not self._in_block or stream_id != self._block_stream:
                raise RelayError("CONTINUATION without a header block")
            self._block += payload
            if len(self._block) > MAX_FRAME:
                raise RelayError("header block too large")
            if flags & _END_HEADERS:
                self._end_block(events)
            return self.rewrite is None
        elif self._in_block:
            raise RelayError("a frame interrupted a header block")
        elif kind == _RST_STREAM:
            events.append(StreamReset(stream_id, self.from_client))
        elif kind == _PING:
            return not (flags & _ACK and bytes(payload) == PING_PAYLOAD)
        elif kind == _GOAWAY and len(payload) >= 4:
            events.append(GoAway(int.from_bytes(payload[:4], "big") & 0x7FFFFFFF))
        elif kind == _SETTINGS and not flags & _ACK:
            events.append(Settings(_header_table_size(payload)))
        return True

    def _end_block(self, events: list[Event]) -> None:
        try:
            headers = self.decoder.decode(bytes(self._block))
        except hpack.HPACKError as exc:
            raise RelayError(f"header block cannot be decoded: {exc}") from exc
        stream_id, flags, kind = self._block_stream, self._block_flags, self._block_kind
        self._block.clear()
        self._in_block = False
        if kind == _PUSH_PROMISE:
            return  # decoded for the compression state only
        end_stream = bool(flags & _END_STREAM)
        if self.rewrite is not None:
            rewritten = self.rewrite(headers, stream_id not in self._started)
            block = self._blocks.encode(rewritten)  # most requests repeat: encoded once
            self.injected.append(header_frames(stream_id, end_stream, block))
        if self.from_client:
            if stream_id not in self._started:
                self._started.add(stream_id)
                events.append(
                    RequestStarted(
                        stream_id,
                        _find(headers, b":authority"),
                        end_stream,
                        _find(headers, b":method"),
                        _find(headers, b":path"),
                        _find(headers, b":scheme"),
                    )
                )
            return
        status_text = _find(headers, b":status")
        grpc = _grpc_status(headers)
        if status_text and not status_text.startswith(b"1"):
            events.append(ResponseStarted(stream_id, int(status_text), end_stream, grpc))
            if end_stream:
                events.append(ResponseEnded(stream_id, grpc))
        elif not status_text and end_stream:  # trailers
            events.append(ResponseEnded(stream_id, grpc))

    def forget(self, stream_id: int) -> None:
        self._started.discard(stream_id)


def _fragment(payload: memoryview, flags: int, kind: int) -> memoryview:
    start, end = 0, len(payload)
    if flags & _PADDED:
        if not payload:
            raise RelayError("padded frame without a pad length")
        end -= payload[0]
        start = 1
    if kind == _PUSH_PROMISE:
        start += 4
    elif flags & _PRIORITY:
        start += 5
    if start > end:
        raise RelayError("frame padding exceeds its payload")
    return payload[start:end]


def _find(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def _grpc_status(headers: list[tuple[bytes, bytes]]) -> int | None:
    value = _find(headers, b"grpc-status")
    if not value:
        return None
    return int(value) if value.isdigit() else 2  # 2 = UNKNOWN


def _header_table_size(payload: memoryview) -> int | None:
    found = None
    for offset in range(0, len(payload) - 5, 6):
        if int.from_bytes(payload[offset : offset + 2], "big") == _HEADER_TABLE_SIZE:
            found = int.from_bytes(payload[offset + 2 : offset + 6], "big")
    return found


def without_dynamic_table(frame: bytes) -> bytes:
    """A SETTINGS ``frame`` (header included) with ``SETTINGS_HEADER_TABLE_SIZE`` 0: the value
    replaced, or the setting appended. A malformed payload is left for the receiver to refuse."""
    payload = frame[9:]
    if len(payload) % 6:
        return frame
    settings = [payload[i : i + 6] for i in range(0, len(payload), 6)]
    kept = [item for item in settings if item[:2] != _NO_TABLE[:2]]
    payload = b"".join([*kept, _NO_TABLE])
    return len(payload).to_bytes(3, "big") + frame[3:9] + payload
