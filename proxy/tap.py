"""Live request tap (sans-IO): the event model, subscriber filters, bounded buffers, rate limits.

Theory of operation. The protocol shells report each HTTP exchange in three calls:

    tapped = hub.request_start(conn=..., stream=..., method=..., ...)   # TapStream | None
    if tapped is not None: tapped.response_start(status)
    if tapped is not None: tapped.end(response_bytes=..., grpc_status=..., error=...)

``request_start`` is on every request's path, so when nobody is subscribed it returns ``None``
after one attribute test: no clock read, no decoding, no allocation (arguments are the raw
``bytes`` the shell already holds and an address tuple it already has). When someone is, the
request is matched against each subscriber's ``TapFilter`` (direction, authority, path prefix,
method), charged to that subscriber's ``TokenBucket`` (``max_rps``), and the returned
``TapStream`` remembers which subscribers took it, so ``response_start`` and ``end`` need no
per-subscriber lookup tables. A subscriber filtering on a status class gets the request event
only once the response status is known (held on the ``TapStream``, whose life is the stream's).

Each subscriber owns a bounded buffer of events. A full buffer never grows and never blocks the
proxy: the stream is dropped for that subscriber (counted once in ``dropped``; its remaining
events are skipped, so a reader sees whole exchanges or their beginning, never an ``end`` without
its ``req``). Requests skipped by the rate limit are counted in ``rate_limited``. The I/O shell
(``proxy/tapserver.py``) drains buffers with ``Subscriber.take`` when ``notify`` tells it events
arrived.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "DEFAULT_BUFFER_EVENTS",
    "DEFAULT_MAX_RPS",
    "DEFAULT_MAX_SUBSCRIBERS",
    "MAX_RPS_LIMIT",
    "Address",
    "TapEnd",
    "TapEvent",
    "TapFilter",
    "TapHub",
    "TapLimitError",
    "TapRequest",
    "TapResponse",
    "TapStream",
    "TokenBucket",
    "Subscriber",
    "encode_event",
    "next_connection_id",
]

DEFAULT_MAX_RPS: Final = 100.0
"""Requests per second one subscriber receives unless it asks otherwise (Linkerd's default)."""
MAX_RPS_LIMIT: Final = 10_000.0
"""The most a subscriber may ask for: more would cost the proxy real CPU on its request path."""
DEFAULT_BUFFER_EVENTS: Final = 1024
"""Events buffered per subscriber: a few seconds of a slow terminal at ``max_rps`` 100."""
DEFAULT_MAX_SUBSCRIBERS: Final = 8
"""Concurrent tap sessions per proxy: each costs a filter match per request."""

Address = tuple[str, int] | str
"""A peer address as the shell holds it: ``(host, port)``, formatted only when tapped."""

_connection_ids = itertools.count()


def next_connection_id() -> int:
    """A process-unique connection number, the ``conn`` half of a tap id ``conn:stream``."""
    return next(_connection_ids)


class TapLimitError(Exception):
    """No more subscribers are accepted (``max_subscribers`` are tapping already)."""


class TapRequest(NamedTuple):
    id: str
    direction: str
    src: str
    dst: str
    tls: str
    client_id: str
    server_id: str
    method: str
    authority: str
    path: str
    scheme: str


class TapResponse(NamedTuple):
    request: TapRequest
    status: int
    latency_us: int


class TapEnd(NamedTuple):
    request: TapRequest
    duration_us: int
    response_bytes: int
    grpc_status: int | None
    error: str
    """Empty for a clean end; else why the stream ended early (``reset``, an error slug)."""


TapEvent = TapRequest | TapResponse | TapEnd
"""Events are named tuples: built on the request path, where a frozen dataclass's
``__init__`` costs ten times as much."""


def _format_address(address: Address) -> str:
    if isinstance(address, str):
        return address
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class TapFilter:
    """What one subscriber wants; ``None`` matches anything. Values are as on the wire (bytes)."""

    direction: str | None = None
    authority: bytes | None = None
    """Exact, case-insensitive (stored lowercase)."""
    path_prefix: bytes | None = None
    method: bytes | None = None
    """Exact, stored uppercase."""
    status_class: int | None = None
    """1..5 for ``1xx``..``5xx``."""

    def matches_request(self, direction: str, method: bytes, authority: bytes, path: bytes) -> bool:
        if self.direction is not None and direction != self.direction:
            return False
        if self.method is not None and method.upper() != self.method:
            return False
        if self.authority is not None and authority.lower() != self.authority:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)

    def matches_status(self, status: int) -> bool:
        return self.status_class is None or status // 100 == self.status_class


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst`` (one second's worth by default)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._tokens = self.burst
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Subscriber:
    """One tap session: its filter, rate limit, bounded buffer and loss counters."""

    __slots__ = (
        "_events", "bucket", "capacity", "closed", "dropped", "filter", "notify", "rate_limited"
    )  # fmt: skip

    def __init__(self, tap_filter: TapFilter, bucket: TokenBucket, capacity: int) -> None:
        self.filter = tap_filter
        self.bucket = bucket
        self.capacity = capacity
        self._events: deque[TapEvent] = deque()
        self.dropped = 0
        """Streams cut short because this buffer was full."""
        self.rate_limited = 0
        """Matching requests skipped by ``max_rps``."""
        self.closed = False
        self.notify: Callable[[], None] | None = None
        """Called when the buffer goes from empty to non-empty (the shell wakes its writer)."""

    def _push(self, event: TapEvent) -> bool:
        if len(self._events) >= self.capacity:
            self.dropped += 1
            return False
        self._events.append(event)
        if len(self._events) == 1 and self.notify is not None:
            self.notify()
        return True

    def take(self) -> list[TapEvent]:
        """Every buffered event, oldest first; the buffer is empty afterwards."""
        events = list(self._events)
        self._events.clear()
        return events

    def __len__(self) -> int:
        return len(self._events)


class TapHub:
    """The proxy-wide registry of subscribers; the shells publish into it."""

    __slots__ = ("_clock", "_subscribers", "buffer_events", "max_subscribers")

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
        buffer_events: int = DEFAULT_BUFFER_EVENTS,
    ) -> None:
        self._clock = clock
        self._subscribers: tuple[Subscriber, ...] = ()  # copied on change: iteration is safe
        self.max_subscribers = max_subscribers
        self.buffer_events = buffer_events

    @property
    def active(self) -> bool:
        """Whether anyone is subscribed (shells may skip preparing arguments when not)."""
        return bool(self._subscribers)

    def subscribe(self, tap_filter: TapFilter, *, max_rps: float = DEFAULT_MAX_RPS) -> Subscriber:
        if len(self._subscribers) >= self.max_subscribers:
            raise TapLimitError(f"{self.max_subscribers} tap sessions are open already")
        if not 0 < max_rps <= MAX_RPS_LIMIT:
            raise ValueError(f"max_rps must be in (0, {MAX_RPS_LIMIT:g}]")
        subscriber = Subscriber(tap_filter, TokenBucket(max_rps, self._clock()), self.buffer_events)
        self._subscribers = (*self._subscribers, subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.closed = True
        subscriber.notify = None
        self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)

    def request_start(
        self,
        *,
        conn: int,
        stream: int,
        direction: str,
        method: bytes,
        authority: bytes,
        path: bytes,
        src: Address,
        dst: Address,
        scheme: bytes = b"http",
        tls: str = "no_identity",
        client_id: str = "",
        server_id: str = "",
    ) -> TapStream | None:
        """A request head was read; ``None`` (and no work) unless some subscriber wants it."""
        subscribers = self._subscribers
        if not subscribers:
            return None
        now = self._clock()
        chosen: list[Subscriber] | None = None  # lists only once something matches
        held: list[Subscriber] | None = None
        for subscriber in subscribers:
            if not subscriber.filter.matches_request(direction, method, authority, path):
                continue
            if subscriber.filter.status_class is not None:
                # Charged and told once the status is known.
                held = [subscriber] if held is None else [*held, subscriber]
            elif subscriber.bucket.take(now):
                chosen = [subscriber] if chosen is None else [*chosen, subscriber]
            else:
                subscriber.rate_limited += 1
        if chosen is None and held is None:
            return None
        request = TapRequest(
            id=f"{conn}:{stream}",
            direction=direction,
            src=_format_address(src),
            dst=_format_address(dst),
            tls=tls,
            client_id=client_id,
            server_id=server_id,
            method=_text(method),
            authority=_text(authority),
            path=_text(path),
            scheme=_text(scheme),
        )
        kept = [subscriber for subscriber in chosen or () if subscriber._push(request)]
        if not kept and held is None:
            return None
        return TapStream(self._clock, request, now, kept, held or [])


class TapStream:
    """One tapped exchange; the shell reports its response head and its end here."""

    __slots__ = (
        "_clock", "_held", "_responded", "_started", "_subscribers", "request", "response_bytes"
    )  # fmt: skip

    def __init__(
        self,
        clock: Callable[[], float],
        request: TapRequest,
        started: float,
        subscribers: list[Subscriber],
        held: list[Subscriber],
    ) -> None:
        self._clock = clock
        self.request = request
        self._started = started
        self._subscribers = subscribers
        self._held = held
        self._responded = False
        self.response_bytes = 0
        """Body bytes sent to the client so far; the shell may add to it as they pass."""

    def response_start(self, status: int) -> None:
        """The response head (final status, not 1xx) went to the client; once per stream."""
        if self._responded:
            return
        self._responded = True
        now = self._clock()
        if self._held:
            for subscriber in self._held:
                if subscriber.closed or not subscriber.filter.matches_status(status):
                    continue
                if not subscriber.bucket.take(now):
                    subscriber.rate_limited += 1
                elif subscriber._push(self.request):
                    self._subscribers.append(subscriber)
            self._held = []
        if self._subscribers:
            latency = round((now - self._started) * 1e6)
            self._publish(TapResponse(self.request, status, latency))

    def end(
        self,
        *,
        response_bytes: int | None = None,
        grpc_status: int | None = None,
        error: str = "",
    ) -> None:
        """The exchange is over: cleanly, or (``error``: ``reset``, a slug) cut short."""
        self._held = []  # no status ever came: a status filter cannot match
        if not self._subscribers:
            return
        duration = round((self._clock() - self._started) * 1e6)
        length = self.response_bytes if response_bytes is None else response_bytes
        self._publish(TapEnd(self.request, duration, length, grpc_status, error))
        self._subscribers = []

    def _publish(self, event: TapEvent) -> None:
        kept = [s for s in self._subscribers if not s.closed and s._push(event)]
        self._subscribers = kept


def encode_event(event: TapEvent) -> bytes:
    """One NDJSON line (with its newline), the tap server's wire format (docs/tap.md)."""
    request = event if isinstance(event, TapRequest) else event.request
    record: dict[str, object] = {
        "id": request.id,
        "direction": request.direction,
        "src": request.src,
        "dst": request.dst,
        "tls": request.tls,
    }
    if isinstance(event, TapRequest):
        record["event"] = "request"
        record.update(
            method=request.method,
            authority=request.authority,
            path=request.path,
            scheme=request.scheme,
            client_id=request.client_id,
            server_id=request.server_id,
        )
    elif isinstance(event, TapResponse):
        record.update(event="response", status=event.status, latency_us=event.latency_us)
    else:
        record.update(
            event="end",
            duration_us=event.duration_us,
            response_bytes=event.response_bytes,
            grpc_status=event.grpc_status,
            error=event.error,
        )
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
