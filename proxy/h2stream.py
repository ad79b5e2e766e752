"""One client stream of the per-stream HTTP/2 mesh path (``proxy/h2mux.py``): its state and the
two pumps that move its bytes under flow control (no I/O here).

A request's body chunks are kept as they arrive (``body``) and sent to the current attempt's
upstream stream as its window allows (``pump_request``); a chunk is acknowledged to the client
(``consumed``: the client may send more) when it is first sent upstream, so the proxy holds at most
a window's worth per stream. While the whole body is within the retry buffer limit the chunks
are kept for a retry (``replayable``); beyond it, sent chunks are dropped. The response flows
the other way (``pump_response``), acknowledged to the upstream as it reaches the client.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

import trio

from proxy.balance import Attempts, Pick
from proxy.discovery import Endpoint
from proxy.h2peer import Peer
from proxy.tap import TapStream

if TYPE_CHECKING:
    from proxy.h2upstream import StreamOwner, Upstream
    from proxy.outbound import Target

__all__ = ["HOP_BY_HOP", "MuxStream", "forwardable", "grpc_status", "status_of"]

HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def forwardable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without connection-specific fields (RFC 9113 8.2.2); ``te`` only if
    ``trailers``."""
    for name, value in headers:
        if name in HOP_BY_HOP or (name == b"te" and value != b"trailers"):
            break
    else:
        return headers
    return [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP and not (name == b"te" and value != b"trailers")
    ]


def status_of(headers: list[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() and len(value) == 3 else 0
    return 0


def grpc_status(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else 2  # 2 = UNKNOWN
    return None


class MuxStream:
    """One client request and the attempt currently carrying it."""

    __slots__ = (
        "acked",
        "attempt_started",
        "attempts",
        "authority",
        "begun",
        "body",
        "body_size",
        "cancelled",
        "committed",
        "end_sent",
        "endpoint",
        "finished",
        "grpc",
        "headers",
        "labels",
        "method",
        "next_retry",
        "offset",
        "overflow",
        "owner",
        "path",
        "pick",
        "reported",
        "req_ended",
        "resp",
        "resp_ended",
        "resp_trailers",
        "route_labels",
        "scope",
        "sent",
        "sid",
        "started",
        "status",
        "tap",
        "target",
        "task",
        "trailers",
        "up",
        "up_id",
        "wake",
    )  # fmt: skip

    def __init__(
        self,
        sid: int,
        headers: list[tuple[bytes, bytes]],
        *,
        method: bytes,
        path: bytes,
        authority: bytes,
        end_stream: bool,
        now: float,
    ) -> None:
        self.sid = sid
        self.headers = headers
        self.owner: StreamOwner  # the client connection (set by its creator)
        self.attempts: Attempts[Endpoint]  # set once the stream's target is resolved
        self.target: Target
        self.task = False  # a task runs its attempts (picks that wait, connects, timeouts)
        self.begun = False  # target, route and attempts set
        self.method, self.path, self.authority = method, path, authority
        self.started = now
        self.attempt_started = now
        self.req_ended = end_stream
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.body: list[tuple[bytes, int]] = []
        self.body_size = 0
        self.overflow = False  # the body outgrew the retry buffer: never retried
        self.sent = 0  # chunks of ``body`` sent on the current attempt
        self.offset = 0  # bytes of ``body[sent]`` sent on the current attempt
        self.acked = 0  # chunks of ``body`` acknowledged to the client
        self.end_sent = False
        self.up: Upstream | None = None
        self.up_id = 0
        self.pick: Pick[Endpoint] | None = None
        self.endpoint: Endpoint | None = None
        self.reported = True
        self.committed = False  # the response head went to the client
        self.status = 0
        self.grpc: int | None = None
        self.resp: deque[tuple[bytes, int]] = deque()
        self.resp_ended = False
        self.resp_trailers: list[tuple[bytes, bytes]] | None = None
        self.labels = ""
        self.route_labels = ""
        self.tap: TapStream | None = None
        self.wake: trio.Event | None = None  # made when a task waits on the stream
        self.next_retry = False
        self.finished = False
        self.cancelled = False
        self.scope: trio.CancelScope | None = None

    @property
    def replayable(self) -> bool:
        return self.req_ended and not self.overflow

    def add_body(self, data: bytes, flow: int, end_stream: bool, limit: int) -> None:
        self.body.append((data, flow))
        self.body_size += len(data)
        if self.body_size > limit:
            self.overflow = True
        if end_stream:
            self.req_ended = True

    def rewind(self) -> None:
        """A new attempt: send the kept body from its start."""
        self.sent = self.offset = 0
        self.end_sent = False

    def pump_request(self, down: Peer) -> None:
        """Send what the upstream stream's window allows; acknowledge first sends to ``down``."""
        up = self.up
        if up is None or self.end_sent:
            return
        peer, up_id, body = up.peer, self.up_id, self.body
        count = len(body)
        while self.sent < count:
            data, flow = body[self.sent]
            chunk = data[self.offset :] if self.offset else data
            window = peer.window(up_id)
            last = self.sent == count - 1 and self.req_ended and self.trailers is None
            if len(chunk) > window:
                if window <= 0:
                    break
                peer.send_data(up_id, chunk[:window], False)
                self.offset += window
                continue
            peer.send_data(up_id, chunk, last)
            self.offset = 0
            self.sent += 1
            if self.sent > self.acked:
                down.consumed(self.sid, flow)
                self.acked = self.sent
            if last:
                self.end_sent = True
        if self.sent == count and self.req_ended and not self.end_sent:
            if self.trailers is not None:
                peer.send_headers(up_id, self.trailers, True)
            else:
                peer.send_data(up_id, b"", True)
            self.end_sent = True
        if self.overflow and self.sent:  # not replayable: keep only what is not sent yet
            del body[: self.sent]
            self.acked -= self.sent
            self.sent = 0

    def pump_response(self, down: Peer) -> bool:
        """Send response data the client's window allows; ``True`` once the response ended."""
        resp = self.resp
        up = self.up
        while resp:
            data, flow = resp[0]
            window = down.window(self.sid)
            if len(data) > window:
                if window <= 0:
                    return False
                down.send_data(self.sid, data[:window], False)
                resp[0] = (data[window:], flow)
                continue
            resp.popleft()
            end = not resp and self.resp_ended and self.resp_trailers is None
            down.send_data(self.sid, data, end)
            if self.tap is not None:
                self.tap.response_bytes += len(data)
            if flow and up is not None:
                up.peer.consumed(self.up_id, flow)
            if end:
                return True
        if self.resp_ended:
            if self.resp_trailers is not None:
                down.send_headers(self.sid, self.resp_trailers, True)
            else:
                down.send_data(self.sid, b"", True)
            return True
        return False

    def unacked(self) -> int:
        """Flow-controlled bytes received from the client and never acknowledged."""
        if self.acked >= len(self.body):
            return 0
        return sum(flow for _, flow in self.body[self.acked :])
