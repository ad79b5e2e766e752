"""One HTTP/2 connection as the proxy's end of it (sans-IO): bytes in, events out; calls in, bytes
out. The per-stream mesh path (``proxy/h2mux.py``) holds one for the client connection
(``client_side=False``) and one per upstream connection (``client_side=True``).

Theory of operation. This is deliberately much less than ``h2.connection.H2Connection``: no
stream state machines and no header validation beyond what routing needs, because the proxy
only moves streams between two peers that validate their own traffic. What it does do is what an
HTTP/2 endpoint must do itself:

- framing: frames are parsed whole (at most ``MAX_FRAME_SIZE``, which the proxy advertises), header
  blocks (HEADERS + CONTINUATION) are collected and decoded with this connection's own HPACK
  decoder; blocks the proxy sends are encoded as "literal without indexing" (RFC 7541 6.2.2, no
  Huffman): the peer's dynamic table is never touched, so no encoder state exists at all;
- SETTINGS (acknowledged; the peer's initial window, concurrency and frame size followed), PING
  (answered), WINDOW_UPDATE (send windows per stream and for the connection), GOAWAY and
  RST_STREAM (reported as events);
- flow control: ``window(stream)`` is what may be sent now; ``consumed(stream, n)`` says the
  proxy passed ``n`` received bytes on, which returns them to the peer in WINDOW_UPDATEs once half
  a window is owed. The proxy acknowledges only what it forwarded, so the bytes it holds per
  connection and direction are bounded by the windows it advertises.

A peer breaking the protocol raises ``PeerError`` (the shell sends the GOAWAY it carries and
closes). Frames for streams the proxy already forgot (reset, finished) are dropped, their DATA
still counted against the connection window.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import hpack

from proxy.h2frames import PING_PAYLOAD, PREFACE, BlockCache, encode_block, frame
from proxy.hpackcache import CachingDecoder

__all__ = [
    "CANCEL",
    "INITIAL_WINDOW",
    "MAX_CONCURRENT",
    "MAX_FRAME_SIZE",
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "Data",
    "GoAwayReceived",
    "Headers",
    "Peer",
    "PeerError",
    "PeerEvent",
    "Reset",
    "WindowOpened",
    "encode_block",
]

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
_S_HEADER_TABLE_SIZE, _S_ENABLE_PUSH, _SMAX_CONCURRENT = 0x1, 0x2, 0x3
_S_INITIAL_WINDOW, _S_MAX_FRAME = 0x4, 0x5
MAX_FRAME_SIZE: Final = 16384  # the default: what the proxy advertises and sends
INITIAL_WINDOW: Final = 65535  # per stream, both ways (the default, so no SETTINGS race)
_CONNECTION_WINDOW: Final = 1 << 20  # what the proxy advertises for the whole connection
_MAX_WINDOW: Final = 2**31 - 1
_MAX_BLOCK: Final = 1 << 18  # a header block (with CONTINUATIONs) larger than this is refused
MAX_CONCURRENT: Final = 100  # streams a client may open to the proxy at once
_FRAME_HEAD: Final = struct.Struct(">BHBBL")  # length (3 bytes: 1 + 2), type, flags, stream id


class PeerError(Exception):
    """The peer broke HTTP/2: close the connection after sending ``goaway``."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


# Events are not frozen: a frozen dataclass's __init__ (object.__setattr__ per field) costs
# three times a plain one, and every frame makes one.
@dataclass(slots=True)
class Headers:
    stream_id: int
    headers: list[tuple[bytes, bytes]]
    end_stream: bool


@dataclass(slots=True)
class Data:
    stream_id: int
    data: bytes
    flow: int
    """Bytes counted by flow control (padding included): hand back with ``consumed``."""
    end_stream: bool


@dataclass(slots=True)
class Reset:
    stream_id: int
    code: int


@dataclass(slots=True)
class GoAwayReceived:
    last_stream_id: int
    code: int


@dataclass(slots=True)
class WindowOpened:
    stream_id: int
    """0: the connection's window (or every stream's, after a SETTINGS change)."""


PeerEvent = Headers | Data | Reset | GoAwayReceived | WindowOpened


class Peer:
    """The proxy's end of one HTTP/2 connection (see the module docstring)."""

    def __init__(self, *, client_side: bool) -> None:
        self.client_side = client_side
        self.out = bytearray()
        self.decoder = CachingDecoder()
        self._blocks = BlockCache()
        self._buffer = bytearray()
        self._preface_left = 0 if client_side else len(PREFACE)
        self._block = bytearray()
        self._block_stream = 0
        self._block_end_stream = False
        # what we may send
        self._send_conn = INITIAL_WINDOW
        self._send_streams: dict[int, int] = {}
        self._peer_initial = INITIAL_WINDOW
        self.peer_max_concurrent = _MAX_WINDOW
        self._peer_max_frame = MAX_FRAME_SIZE
        # what the peer owes back / we owe it
        self._recv_conn_owed = 0
        self._recv_owed: dict[int, int] = {}
        self._recv_conn_left = _CONNECTION_WINDOW
        self.next_stream_id = 1
        self.highest_remote = 0
        self.goaway_received: int | None = None

    # -- setting up -------------------------------------------------------------------------------

    def initiate(self) -> None:
        """The preface (client side), our SETTINGS and the larger connection window."""
        if self.client_side:
            self.out += PREFACE
        # A zero HPACK table: the peer's blocks then never change our decoder's table, so
        # repeated blocks are served by its cache (``proxy/hpackcache.py``). Saying so also
        # makes encoders that index without keeping a table (nginx) send the size update that
        # stops them adding an entry per field per response, which emptied the cache each time.
        settings = bytearray(_S_HEADER_TABLE_SIZE.to_bytes(2, "big") + (0).to_bytes(4, "big"))
        if self.client_side:
            settings += _S_ENABLE_PUSH.to_bytes(2, "big") + (0).to_bytes(4, "big")
        else:
            settings += _SMAX_CONCURRENT.to_bytes(2, "big") + MAX_CONCURRENT.to_bytes(4, "big")
        self.out += frame(_SETTINGS, 0, 0, bytes(settings))
        increment = _CONNECTION_WINDOW - INITIAL_WINDOW
        self.out += frame(_WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big"))

    # -- receiving --------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[PeerEvent]:
        """Consume ``data``; return what happened. Raises ``PeerError``."""
        events: list[PeerEvent] = []
        if self._preface_left:
            data = self._take_preface(data)
        buffer = self._buffer
        if buffer:  # the rest of a frame that began in an earlier read
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        offset = 0
        size = len(data)
        unpack = _FRAME_HEAD.unpack_from
        while size - offset >= 9:
            high, low, kind, flags, stream_id = unpack(data, offset)
            length = high << 16 | low
            if length > MAX_FRAME_SIZE:
                raise PeerError(f"a {length}-byte frame is too large", FRAME_SIZE_ERROR)
            end = offset + 9 + length
            if end > size:
                break
            self._frame_in(kind, flags, stream_id & 0x7FFFFFFF, data[offset + 9 : end], events)
            offset = end
        if offset < size:
            buffer += data[offset:] if offset else data
        return events

    def _take_preface(self, data: bytes) -> bytes:
        taken = min(self._preface_left, len(data))
        start = len(PREFACE) - self._preface_left
        if data[:taken] != PREFACE[start : start + taken]:
            raise PeerError("the client did not send the HTTP/2 preface")
        self._preface_left -= taken
        return data[taken:]

    def _frame_in(  # noqa: PLR0912 - one branch per frame type
        self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[PeerEvent]
    ) -> None:
        if self._block_stream and kind != _CONTINUATION:
            raise PeerError("a frame interrupted a header block")
        if kind == _DATA:
            self._data_in(flags, stream_id, payload, events)
        elif kind == _HEADERS:
            if stream_id == 0:
                raise PeerError("HEADERS on stream 0")
            self._block_stream, self._block_end_stream = stream_id, bool(flags & _END_STREAM)
            self._block += _fragment(payload, flags)
            if flags & _END_HEADERS:
                self._end_block(events)
        elif kind == _CONTINUATION:
            if stream_id != self._block_stream or not stream_id:
                raise PeerError("CONTINUATION without a header block")
            self._block += payload
            if len(self._block) > _MAX_BLOCK:
                raise PeerError("header block too large")
            if flags & _END_HEADERS:
                self._end_block(events)
        elif kind == _RST_STREAM:
            if len(payload) != 4 or stream_id == 0:
                raise PeerError("malformed RST_STREAM", FRAME_SIZE_ERROR)
            self._forget(stream_id)
            events.append(Reset(stream_id, int.from_bytes(payload, "big")))
        elif kind == _SETTINGS:
            if not flags & _ACK:
                self._settings_in(payload, events)
        elif kind == _PING:
            if len(payload) != 8:
                raise PeerError("malformed PING", FRAME_SIZE_ERROR)
            if not flags & _ACK:
                self.out += frame(_PING, _ACK, 0, payload)
        elif kind == _GOAWAY:
            if len(payload) < 8:
                raise PeerError("malformed GOAWAY", FRAME_SIZE_ERROR)
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.goaway_received = last
            events.append(GoAwayReceived(last, int.from_bytes(payload[4:8], "big")))
        elif kind == _WINDOW_UPDATE:
            self._window_update_in(stream_id, payload, events)
        elif kind == _PUSH_PROMISE:
            raise PeerError("PUSH_PROMISE although push is disabled")
        # PRIORITY and unknown frame types are ignored (RFC 9113 5.5)

    def _data_in(self, flags: int, stream_id: int, payload: bytes, events: list[PeerEvent]) -> None:
        if stream_id == 0:
            raise PeerError("DATA on stream 0")
        flow = len(payload)
        self._recv_conn_left -= flow
        if self._recv_conn_left < 0:
            raise PeerError("the connection window was exceeded", FLOW_CONTROL_ERROR)
        if flags & _PADDED:
            payload = _fragment(payload, flags, headers=False)
        forgotten = stream_id not in self._recv_owed
        # An upstream's connection window comes back on receipt (see ``consumed``); a forgotten
        # stream's bytes come back at once.
        if self.client_side or forgotten:
            self._owe_connection(flow)
        if forgotten:
            return
        events.append(Data(stream_id, payload, flow, bool(flags & _END_STREAM)))

    def _end_block(self, events: list[PeerEvent]) -> None:
        stream_id = self._block_stream
        try:
            headers = self.decoder.decode(bytes(self._block))
        except hpack.HPACKError as exc:
            raise PeerError(f"header block cannot be decoded: {exc}", 0x9) from exc
        self._block.clear()
        self._block_stream = 0
        if not self.client_side and stream_id > self.highest_remote:
            if stream_id % 2 == 0:
                raise PeerError("a client opened an even stream")
            self.highest_remote = stream_id
            self._open(stream_id)
        elif stream_id not in self._recv_owed:
            return  # a stream we forgot (we reset it): decoded for the HPACK state only
        events.append(Headers(stream_id, headers, self._block_end_stream))

    def _settings_in(self, payload: bytes, events: list[PeerEvent]) -> None:
        if len(payload) % 6:
            raise PeerError("malformed SETTINGS", FRAME_SIZE_ERROR)
        for offset in range(0, len(payload), 6):
            key = int.from_bytes(payload[offset : offset + 2], "big")
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            if key == _S_INITIAL_WINDOW:
                if value > _MAX_WINDOW:
                    raise PeerError("initial window too large", FLOW_CONTROL_ERROR)
                delta = value - self._peer_initial
                self._peer_initial = value
                for sid in self._send_streams:
                    self._send_streams[sid] += delta
                events.append(WindowOpened(0))
            elif key == _SMAX_CONCURRENT:
                self.peer_max_concurrent = value
            elif key == _S_MAX_FRAME:
                if not MAX_FRAME_SIZE <= value <= 2**24 - 1:
                    raise PeerError("invalid SETTINGS_MAX_FRAME_SIZE")
                self._peer_max_frame = value
        self.out += frame(_SETTINGS, _ACK, 0)

    def _window_update_in(self, stream_id: int, payload: bytes, events: list[PeerEvent]) -> None:
        if len(payload) != 4:
            raise PeerError("malformed WINDOW_UPDATE", FRAME_SIZE_ERROR)
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            self._send_conn += increment
            if self._send_conn > _MAX_WINDOW:
                raise PeerError("connection window overflow", FLOW_CONTROL_ERROR)
        elif stream_id in self._send_streams:
            self._send_streams[stream_id] += increment
        else:
            return
        events.append(WindowOpened(stream_id))

    # -- streams ----------------------------------------------------------------------------------

    def _open(self, stream_id: int) -> None:
        self._send_streams[stream_id] = self._peer_initial
        self._recv_owed[stream_id] = 0

    def _forget(self, stream_id: int) -> None:
        self._send_streams.pop(stream_id, None)
        self._recv_owed.pop(stream_id, None)

    @property
    def open_streams(self) -> int:
        return len(self._send_streams)

    def open_stream(self) -> int:
        """A new stream id (client side)."""
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        self._open(stream_id)
        return stream_id

    def close_stream(self, stream_id: int) -> None:
        """The proxy is done with ``stream_id`` (both ways): later frames for it are dropped."""
        self._recv_owed.pop(stream_id, None)
        self._send_streams.pop(stream_id, None)

    # -- sending ----------------------------------------------------------------------------------

    def send_headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        block = self._blocks.encode(headers)
        limit = self._peer_max_frame
        if len(block) <= limit:  # the usual case: one HEADERS frame
            flags = (_END_STREAM | _END_HEADERS) if end_stream else _END_HEADERS
            out = self.out
            out += len(block).to_bytes(3, "big")
            out.append(_HEADERS)
            out.append(flags)
            out += stream_id.to_bytes(4, "big")
            out += block
            return
        first, rest = block[:limit], block[limit:]
        flags = (_END_STREAM if end_stream else 0) | (0 if rest else _END_HEADERS)
        self.out += frame(_HEADERS, flags, stream_id, first)
        while rest:
            chunk, rest = rest[:limit], rest[limit:]
            self.out += frame(_CONTINUATION, 0 if rest else _END_HEADERS, stream_id, chunk)

    def window(self, stream_id: int) -> int:
        """Bytes of DATA that may be sent on ``stream_id`` now."""
        return min(self._send_conn, self._send_streams.get(stream_id, 0), MAX_FRAME_SIZE)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """One DATA frame; ``len(data) <= window(stream_id)`` (the caller checks)."""
        size = len(data)
        self._send_conn -= size
        if stream_id in self._send_streams:
            self._send_streams[stream_id] -= size
        self.out += frame(_DATA, _END_STREAM if end_stream else 0, stream_id, data)

    def consumed(self, stream_id: int, flow: int) -> None:
        """``flow`` received bytes of ``stream_id`` were passed on: the peer may send more.

        On the client side (an upstream connection shared by many client connections) only the
        stream's window waits for this: the connection's came back on receipt, so bytes a slow
        client has not taken yet hold back their own stream only (each bounded by its window).
        """
        if stream_id in self._recv_owed:
            owed = self._recv_owed[stream_id] + flow
            if owed >= INITIAL_WINDOW // 2:
                self.out += frame(_WINDOW_UPDATE, 0, stream_id, owed.to_bytes(4, "big"))
                owed = 0
            self._recv_owed[stream_id] = owed
        if not self.client_side:
            self._owe_connection(flow)

    def _owe_connection(self, flow: int) -> None:
        self._recv_conn_owed += flow
        if self._recv_conn_owed >= _CONNECTION_WINDOW // 4:
            owed = self._recv_conn_owed
            self.out += frame(_WINDOW_UPDATE, 0, 0, owed.to_bytes(4, "big"))
            self._recv_conn_left += owed
            self._recv_conn_owed = 0

    def reset(self, stream_id: int, code: int) -> None:
        self.out += frame(_RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))
        self.close_stream(stream_id)

    def ping(self) -> None:
        """A keepalive PING (the peer's ACK is any read: nothing to match)."""
        self.out += frame(_PING, 0, 0, PING_PAYLOAD)

    def goaway(self, last_stream_id: int, code: int = NO_ERROR) -> None:
        self.out += frame(
            _GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big")
        )


def _fragment(payload: bytes, flags: int, *, headers: bool = True) -> bytes:
    """A HEADERS or DATA payload without padding (and a HEADERS frame's priority fields)."""
    start, end = 0, len(payload)
    if flags & _PADDED:
        if not payload:
            raise PeerError("padded frame without a pad length")
        end -= payload[0]
        start = 1
    if headers and flags & _PRIORITY_FLAG:
        start += 5
    if start > end:
        raise PeerError("frame padding exceeds its payload")
    return payload[start:end]
