"""The webhook's Prometheus metrics, in a registry of their own per app (so tests and several
apps in one process never share counters)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["WebhookMetrics"]

# Admission latency is sub-millisecond when healthy; the API server's timeout is 10 s.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0)


@dataclass(frozen=True, slots=True)
class WebhookMetrics:
    registry: CollectorRegistry
    requests: Counter
    responses: Counter
    latency: Histogram

    @classmethod
    def create(cls) -> WebhookMetrics:
        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            requests=Counter(
                "meshlet_inject_admission_requests",
                "AdmissionReview requests received on /inject",
                ["dry_run"],
                registry=registry,
            ),
            responses=Counter(
                "meshlet_inject_admission_responses",
                "Answers by outcome (injected, skipped, rejected) and reason slug",
                ["outcome", "reason"],
                registry=registry,
            ),
            latency=Histogram(
                "meshlet_inject_admission_duration_seconds",
                "Time from request to answer on /inject, seconds",
                buckets=_BUCKETS,
                registry=registry,
            ),
        )
