"""Moving one HTTP/2 stream's data between two h2 connections (sans-IO: no sockets, no Trio).

A ``Stream`` proxied from a client connection to an upstream one has two ``Flow`` s: the request
(client → upstream) and the response (upstream → client). Data received on a flow's source
connection waits in ``pending`` until ``pump`` can send it within the destination's flow-control
window; only then is the source credited (``acknowledge_received_data``, which h2 turns into
WINDOW_UPDATE frames in batches). The proxy therefore holds at most the window it advertised per
stream, and a slow receiver slows the sender through HTTP/2 flow control itself. Trailers and
end-of-stream are sent after the last queued byte.
"""

from __future__ import annotations

import collections

import h2.exceptions
from h2.connection import H2Connection

__all__ = ["Flow", "Stream", "pump"]


class Flow:
    """One direction of one stream: queued data, then trailers or end-of-stream."""

    __slots__ = ("dst", "dst_id", "ended", "finished", "pending", "src", "src_id", "trailers")

    def __init__(self, src: H2Connection, src_id: int, dst: H2Connection, dst_id: int) -> None:
        self.src, self.src_id, self.dst, self.dst_id = src, src_id, dst, dst_id
        self.pending: collections.deque[tuple[bytes, int]] = collections.deque()
        self.ended = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.finished = False


class Stream:
    __slots__ = ("grpc_status", "labels", "request", "response", "started", "status")

    def __init__(self, request: Flow, response: Flow, labels: str, started: float) -> None:
        self.request, self.response = request, response
        self.labels = labels
        self.started = started
        self.status = 0
        self.grpc_status: int | None = None


def pump(flow: Flow) -> bool:
    """Send what the receiver's window allows and credit the sender for exactly that.

    Returns whether the flow has finished (end-of-stream or trailers sent, or the receiver
    reset the stream).
    """
    if flow.finished:
        return True
    dst, src = flow.dst, flow.src
    pending = flow.pending
    try:
        while pending:
            data, padding = pending[0]
            if not data:  # padding only: nothing to send, credit it at once
                pending.popleft()
                src.acknowledge_received_data(padding, flow.src_id)
                continue
            window = min(dst.local_flow_control_window(flow.dst_id), dst.max_outbound_frame_size)
            if window <= 0:
                return False
            if len(data) <= window:
                pending.popleft()
                last = not pending and flow.ended and flow.trailers is None
                dst.send_data(flow.dst_id, data, end_stream=last)
                src.acknowledge_received_data(len(data) + padding, flow.src_id)
                if last:
                    flow.finished = True
            else:
                dst.send_data(flow.dst_id, data[:window])
                pending[0] = (data[window:], padding)
                src.acknowledge_received_data(window, flow.src_id)
        if flow.finished:
            pass  # end-of-stream went out with the last data frame
        elif flow.trailers is not None:
            dst.send_headers(flow.dst_id, flow.trailers, end_stream=True)
            flow.finished = True
        elif flow.ended:
            dst.end_stream(flow.dst_id)
            flow.finished = True
    except h2.exceptions.StreamClosedError:
        flow.finished = True  # the receiver reset the stream; its reset event cleans up
        pending.clear()
    return flow.finished
