"""The hub: applies source events to the state and wakes the streams whose targets they touch.

Theory of operation: a stream holds no queue. It holds the last view it wrote (the endpoint set,
or the profile) and one "dirty" flag (an ``asyncio.Event``). A change sets the flag of every
subscription on a touched topic; the stream then recomputes its target's view from the state and
writes the difference from what it wrote last. A reader that is slow (or stalled: the server's
writes block on TCP flow control) simply misses intermediate states: whatever happened while it
was behind is folded into one diff, counted as ``destination_updates_coalesced``. Memory per
stream is bounded by the size of one view, never by the rate of change.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal

from .authority import Target
from .endpoints import EndpointSet, diff_lines
from .events import KINDS, Relisted, SourceError, SourceEvent
from .index import ClusterState, Topic, topics_for
from .metrics import DestinationMetrics
from .model import Kind

__all__ = ["Api", "Hub", "encode_line"]

log = logging.getLogger("meshlet.destination")

Api = Literal["endpoints", "profiles"]
KEEPALIVE: Final = {"type": "keepalive"}


def encode_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class _Subscription:
    __slots__ = ("api", "dirty", "target", "topics")

    def __init__(self, api: Api, target: Target) -> None:
        self.api: Api = api
        self.target = target
        self.topics = topics_for(target)
        self.dirty = asyncio.Event()

    def notify(self) -> bool:
        """Mark the stream dirty; True when it already was (this change is coalesced)."""
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
        self.active = 0
        # Streams on the same target share one computed view and one encoded diff: with
        # 1,000 proxies watching a service, a change is computed and serialised once.
        self._sent_counters: dict[tuple[str, str], Any] = {}
        self._targets: dict[Target, int] = {}
        self._views: dict[Target, EndpointSet] = {}
        self._diffs: dict[
            Target, tuple[EndpointSet | None, EndpointSet, list[tuple[str, bytes]]]
        ] = {}

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
            # one watch read) wake each stream once.
            asyncio.get_running_loop().call_soon(self._notify)
        self._touched |= applied.topics

    def _notify(self) -> None:
        touched, self._touched = self._touched, set()
        woken: set[_Subscription] = set()
        for topic in touched:
            woken.update(self._subscriptions.get(topic, ()))
        for subscription in woken:
            self._views.pop(subscription.target, None)
            if subscription.notify():
                self.metrics.updates_coalesced.labels(subscription.api).inc()

    def close(self) -> None:
        """End every stream with a ``close`` line (the server is shutting down)."""
        self.closing = True
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.notify()

    # -- the stream side --------------------------------------------------------------------

    @contextmanager
    def _subscribe(self, api: Api, target: Target) -> Iterator[_Subscription]:
        subscription = _Subscription(api, target)
        for topic in subscription.topics:
            self._subscriptions[topic].add(subscription)
        self.active += 1
        self._targets[target] = self._targets.get(target, 0) + 1
        self.metrics.streams_active.labels(api).inc()
        try:
            yield subscription
        finally:
            self.active -= 1
            self._targets[target] -= 1
            if not self._targets[target]:
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

    async def _next_change(self, subscription: _Subscription) -> AsyncIterator[bytes]:
        """Wait for the flag, writing keepalives meanwhile; clear it before the recompute."""
        while not await _within(subscription.dirty.wait(), self.keepalive_interval):
            yield self._sent(subscription.api, KEEPALIVE)
        subscription.dirty.clear()

    def _closing_line(self, api: Api) -> bytes:
        return self._sent(
            api, {"type": "close", "reason": "the destination service is shutting down"}
        )

    def _view(self, target: Target) -> EndpointSet:
        view = self._views.get(target)
        if view is None:
            view = self._views[target] = self.state.endpoints(target)
        return view

    def _diff(
        self, target: Target, previous: EndpointSet | None, current: EndpointSet
    ) -> list[tuple[str, bytes]]:
        cached = self._diffs.get(target)
        if cached is not None and cached[0] is previous and cached[1] is current:
            return cached[2]
        lines = [(m["type"], encode_line(m)) for m in diff_lines(previous, current)]
        self._diffs[target] = (previous, current, lines)
        return lines

    async def endpoint_lines(self, target: Target) -> AsyncIterator[bytes]:
        """The NDJSON stream for ``GET /v1/endpoints``: a snapshot, then diffs, forever."""
        with self._subscribe("endpoints", target) as subscription:
            async for line in self._until_synced("endpoints"):
                yield line
            previous: EndpointSet | None = None
            while not self.closing:
                current = self._view(target)
                for kind, line in self._diff(target, previous, current):
                    self._counter("endpoints", kind).inc()
                    yield line
                previous = current
                async for line in self._next_change(subscription):
                    yield line
            yield self._closing_line("endpoints")

    async def profile_lines(self, target: Target) -> AsyncIterator[bytes]:
        """The NDJSON stream for ``GET /v1/profiles``: the profile, again whenever it changes."""
        with self._subscribe("profiles", target) as subscription:
            async for line in self._until_synced("profiles"):
                yield line
            previous: dict[str, Any] | None = None
            while not self.closing:
                current = self.state.profile(target)
                if current != previous:
                    yield self._sent("profiles", {"type": "profile", **current})
                previous = current
                async for line in self._next_change(subscription):
                    yield line
            yield self._closing_line("profiles")
