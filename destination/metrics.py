"""The destination service's Prometheus metrics, in a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DestinationMetrics"]


class DestinationMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.watch_events = Counter(
            "destination_watch_events",
            "Events from the object source (RELISTED is a complete list of a kind).",
            ["kind", "type"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "destination_api_errors",
            "Errors reading the object source (API server or local file), by reason.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.skipped_objects = Counter(
            "destination_skipped_objects",
            "Objects skipped (or kept but unusable) because they are malformed, by reason.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.streams_active = Gauge(
            "destination_streams_active",
            "Streams open now.",
            ["api"],
            registry=self.registry,
        )
        self.updates_sent = Counter(
            "destination_updates_sent",
            "Lines written on streams, by type (snapshot, add, remove, profile, keepalive).",
            ["api", "type"],
            registry=self.registry,
        )
        self.updates_coalesced = Counter(
            "destination_updates_coalesced",
            "Changes folded into a pending one because the stream had not caught up yet "
            "(a slow reader gets the latest state, never a growing queue).",
            ["api"],
            registry=self.registry,
        )
        self.fanout_seconds = Histogram(
            "destination_fanout_seconds",
            "From a change reaching the hub (as the watch delivered it) to its update written "
            "on every stream it touches.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry,
        )
        self.fanout_streams = Counter(
            "destination_fanout_streams",
            "Stream updates by who wrote them: 'direct' (the hub, straight to the connection) "
            "or 'task' (the stream's own task: a connection behind on flow control, a profile "
            "stream, or a server without direct writes).",
            ["path"],
            registry=self.registry,
        )
        self.requests_refused = Counter(
            "destination_requests_refused",
            "Stream requests refused with 4xx/503, by reason.",
            ["api", "reason"],
            registry=self.registry,
        )
