"""The hub: applies source events to the state and writes the changes to the streams they touch.

Theory of operation: a stream holds no queue. It holds the last view it wrote (the endpoint set,
or the profile), a "dirty" flag (an ``asyncio.Event``) and, for endpoint streams served by
uvicorn, a ``Sink`` that writes straight to its connection (see ``stream.py``). Events applied in
the same loop turn are folded into one fan-out (``_notify``): for every stream on a touched
topic whose task is idle and whose connection is not behind, the hub computes the target's view
and its diff once, encodes and chunk-frames it once, and writes those same bytes to each sink in
one loop. Every other stream (a profile stream, a connection paused by TCP flow control, a stream
whose task is still writing) gets its flag set; its task then recomputes its target's view and
writes the difference from what it wrote last. A reader that is slow (or stalled) simply misses
intermediate states: whatever happened while it was behind is folded into one diff, counted as
``destination_updates_coalesced``. Memory per stream is bounded by one view, never by the rate of
change.

``destination_fanout_seconds`` times each fan-out from the hub receiving the watch event to the
update written on the last stream it touched (a stream left to its task counts when its task has
written it; a fan-out reaching a stream more than ``_MAX_OWED`` changes behind is not timed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal

from .authority import Target
from .endpoints import EndpointSet, diff_lines
from .events import KINDS, Relisted, SourceError, SourceEvent
from .index import ClusterState, Topic, topics_for
from .metrics import DestinationMetrics
from .model import Kind
from .stream import Sink, chunk

__all__ = ["Api", "Hub", "encode_line"]

log = logging.getLogger("meshlet.destination")

Api = Literal["endpoints", "profiles"]
KEEPALIVE: Final = {"type": "keepalive"}
_MAX_OWED: Final = 8  # fan-outs a lagging stream keeps timing for (older ones go untimed)


def encode_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class _Fanout:
    """One fan-out on its way: when it started, and how many streams' tasks still owe it."""

    __slots__ = ("remaining", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.remaining = 0


class _Diff:
    """The lines from one view to the next, encoded once for every stream on the target."""

    __slots__ = ("current", "frame", "lines", "previous", "uses")

    def __init__(
        self, previous: EndpointSet | None, current: EndpointSet, lines: list[tuple[str, bytes]]
    ) -> None:
        self.previous = previous
        self.current = current
        self.lines = lines
        self.frame = chunk(b"".join(line for _, line in lines)) if lines else b""
        self.uses = 0  # direct writes in the fan-out under way (for updates_sent)


class _Subscription:
    __slots__ = (
        "api",
        "dirty",
        "idle",
        "owed",
        "previous",
        "sink",
        "target",
        "topics",
        "writing",
        "wrote_at",
    )

    def __init__(self, api: Api, target: Target, sink: Sink | None) -> None:
        self.api: Api = api
        self.target = target
        self.topics = topics_for(target)
        self.dirty = asyncio.Event()
        self.sink = sink
        self.idle = False  # the task waits for a change: the hub may write to the sink itself
        self.previous: EndpointSet | None = None  # the view last written (endpoint streams)
        self.owed: list[_Fanout] = []  # fan-outs handed to the task, not yet picked up
        self.writing: list[_Fanout] = []  # fan-outs the task is writing now
        # loop time of the last line written (keepalives fill silences)
        self.wrote_at = asyncio.get_running_loop().time()

    def defer(self, fanout: _Fanout) -> bool:
        """Leave this change to the stream's task; True when one was pending (coalesced)."""
        self.idle = False  # from now on the task owes the writes, until it waits again
        fanout.remaining += 1
        self.owed.append(fanout)
        if len(self.owed) > _MAX_OWED:
            del self.owed[0]
        if self.dirty.is_set():
            return True
        self.dirty.set()
        return False


async def _within(awaitable: Awaitable[Any], seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        return False
    return True


class Hub:
    def __init__(
        self,
        state: ClusterState,
        metrics: DestinationMetrics,
        *,
        keepalive_interval: float,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.keepalive_interval = keepalive_interval
        self.synced = asyncio.Event()
        self.closing = False
        self._listed: set[Kind] = set()
        self._subscriptions: dict[Topic, set[_Subscription]] = defaultdict(set)
        self._touched: set[Topic] = set()
        self._touched_at = 0.0
        self.active = 0
        # Streams on the same target share one computed view and one encoded diff: with
        # 1,000 proxies watching a service, a change is computed and serialised once.
        self._sent_counters: dict[tuple[str, str], Any] = {}
        # target -> (the one equal Target object all its streams share, number of streams)
        self._targets: dict[Target, tuple[Target, int]] = {}
        self._views: dict[Target, EndpointSet] = {}
        self._diffs: dict[Target, _Diff] = {}
        self._direct_count = metrics.fanout_streams.labels("direct")
        self._task_count = metrics.fanout_streams.labels("task")

    # -- the source side --------------------------------------------------------------------

    def apply(self, event: SourceEvent) -> None:
        if isinstance(event, SourceError):
            log.warning("source error (%s): %s", event.reason, event.detail)
            self.metrics.api_errors.labels(event.kind, event.reason).inc()
            return
        kind_type = "RELISTED" if isinstance(event, Relisted) else event.type
        self.metrics.watch_events.labels(event.kind, kind_type).inc()
        applied = self.state.apply(event)
        for bad in applied.skipped:
            if bad.reason == "unknown_service" and not self.synced.is_set():
                continue  # the initial lists arrive in any order: not a problem yet
            log.warning("%s (%s)", bad.describe(), bad.reason)
            self.metrics.skipped_objects.labels(bad.kind, bad.reason).inc()
        if isinstance(event, Relisted) and not self.synced.is_set():
            self._listed.add(event.kind)
            if self._listed >= set(KINDS):
                log.info("initial sync complete: %s", self.state.counts())
                self.synced.set()
        if applied.topics and not self._touched:
            # Events applied in the same loop turn (a local file's four relists, a burst from
            # one watch read) make one fan-out.
            self._touched_at = time.perf_counter()
            asyncio.get_running_loop().call_soon(self._notify)
        self._touched |= applied.topics

    def _notify(self) -> None:
        touched, self._touched = self._touched, set()
        woken: set[_Subscription] = set()
        for topic in touched:
            woken.update(self._subscriptions.get(topic, ()))
        self._views.clear()  # recomputed on demand, once per target
        if not woken:
            return
        fanout = _Fanout(self._touched_at)
        now = asyncio.get_running_loop().time()
        # The hot loop: with N streams on one target, one diff and N writes of the same bytes.
        target: Target | None = None
        previous: EndpointSet | None = None
        diff: _Diff | None = None
        direct = 0
        for subscription in woken:
            sink = subscription.sink
            if sink is None or not subscription.idle or not sink.ready():
                if subscription.defer(fanout):
                    self.metrics.updates_coalesced.labels(subscription.api).inc()
                continue
            # (equal targets are one object, see _subscribe)
            if (
                diff is None
                or subscription.target is not target
                or subscription.previous is not previous
            ):
                if diff is not None:
                    self._count_direct(diff)
                target, previous = subscription.target, subscription.previous
                diff = self._diff(target, previous)
            if diff.frame:
                sink.write(diff.frame)
                subscription.wrote_at = now
                diff.uses += 1
            subscription.previous = diff.current
            direct += 1
        if diff is not None:
            self._count_direct(diff)
        self._direct_count.inc(direct)
        self._task_count.inc(len(woken) - direct)
        if not fanout.remaining:
            self._timed(fanout)

    def _count_direct(self, diff: _Diff) -> None:
        for kind, _ in diff.lines:
            self._counter("endpoints", kind).inc(diff.uses)
        diff.uses = 0

    def _timed(self, fanout: _Fanout) -> None:
        self.metrics.fanout_seconds.observe(time.perf_counter() - fanout.started)

    def close(self) -> None:
        """End every stream with a ``close`` line (the server is shutting down)."""
        self.closing = True
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.idle = False
                subscription.dirty.set()

    # -- the stream side --------------------------------------------------------------------

    @contextmanager
    def _subscribe(
        self, api: Api, target: Target, sink: Sink | None = None
    ) -> Iterator[_Subscription]:
        target, streams = self._targets.get(target, (target, 0))
        self._targets[target] = (target, streams + 1)
        subscription = _Subscription(api, target, sink)
        for topic in subscription.topics:
            self._subscriptions[topic].add(subscription)
        self.active += 1
        self.metrics.streams_active.labels(api).inc()
        try:
            yield subscription
        finally:
            self.active -= 1
            streams = self._targets[target][1] - 1
            self._targets[target] = (target, streams)
            if not streams:
                del self._targets[target]
                self._views.pop(target, None)
                self._diffs.pop(target, None)
            self.metrics.streams_active.labels(api).dec()
            for topic in subscription.topics:
                subscribers = self._subscriptions[topic]
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscriptions[topic]

    def _counter(self, api: Api, kind: str) -> Any:
        """``updates_sent`` children, looked up once (labels() costs more than inc())."""
        child = self._sent_counters.get((api, kind))
        if child is None:
            child = self._sent_counters[(api, kind)] = self.metrics.updates_sent.labels(api, kind)
        return child

    def _sent(self, api: Api, message: dict[str, Any]) -> bytes:
        self._counter(api, message["type"]).inc()
        return encode_line(message)

    async def _until_synced(self, api: Api) -> AsyncIterator[bytes]:
        while not self.synced.is_set() and not self.closing:
            if not await _within(self.synced.wait(), self.keepalive_interval):
                yield self._sent(api, KEEPALIVE)

    async def _next_change(self, subscription: _Subscription, wrote: bool) -> AsyncIterator[bytes]:
        """Wait for the flag, writing keepalives after silences; clear it before the recompute.

        Entered once the lines of the last change are written (the consumer asked for more):
        the fan-outs they carried are delivered. While waiting, the hub may write to the sink.
        """
        loop = asyncio.get_running_loop()
        if wrote:
            subscription.wrote_at = loop.time()
        for fanout in subscription.writing:
            fanout.remaining -= 1
            if not fanout.remaining:
                self._timed(fanout)
        subscription.writing = []
        while True:
            subscription.idle = True
            until_keepalive = self.keepalive_interval - (loop.time() - subscription.wrote_at)
            woken = await _within(subscription.dirty.wait(), until_keepalive)
            subscription.idle = False
            if woken:
                break
            if loop.time() - subscription.wrote_at >= self.keepalive_interval:
                subscription.wrote_at = loop.time()
                yield self._sent(subscription.api, KEEPALIVE)
        subscription.dirty.clear()
        subscription.writing, subscription.owed = subscription.owed, []

    def _closing_line(self, api: Api) -> bytes:
        return self._sent(
            api, {"type": "close", "reason": "the destination service is shutting down"}
        )

    def _view(self, target: Target) -> EndpointSet:
        view = self._views.get(target)
        if view is None:
            view = self._views[target] = self.state.endpoints(target)
        return view

    def _diff(self, target: Target, previous: EndpointSet | None) -> _Diff:
        current = self._view(target)
        cached = self._diffs.get(target)
        if cached is not None and cached.previous is previous and cached.current is current:
            return cached
        lines = [(m["type"], encode_line(m)) for m in diff_lines(previous, current)]
        diff = self._diffs[target] = _Diff(previous, current, lines)
        return diff

    async def endpoint_lines(
        self, target: Target, sink: Sink | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The NDJSON stream for ``GET /v1/endpoints``: a snapshot, then diffs, forever.

        With a ``sink``, the hub writes changes to it directly while this generator waits
        (the consumer must have written every line yielded before it asks for the next).
        """
        with self._subscribe("endpoints", target, sink) as subscription:
            async for line in self._until_synced("endpoints"):
                yield line
            while not self.closing:
                diff = self._diff(target, subscription.previous)
                for kind, line in diff.lines:
                    self._counter("endpoints", kind).inc()
                    yield line
                subscription.previous = diff.current
                async for line in self._next_change(subscription, bool(diff.lines)):
                    yield line
            yield self._closing_line("endpoints")

    async def profile_lines(self, target: Target) -> AsyncGenerator[bytes, None]:
        """The NDJSON stream for ``GET /v1/profiles``: the profile, again whenever it changes."""
        with self._subscribe("profiles", target) as subscription:
            async for line in self._until_synced("profiles"):
                yield line
            previous: dict[str, Any] | None = None
            while not self.closing:
                current = self.state.profile(target)
                wrote = current != previous
                if wrote:
                    yield self._sent("profiles", {"type": "profile", **current})
                previous = current
                async for line in self._next_change(subscription, wrote):
                    yield line
            yield self._closing_line("profiles")
