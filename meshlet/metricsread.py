"""Reading the proxies' Prometheus text: parse, subtract two scrapes, estimate quantiles.

Everything here is pure: text in, numbers out. ``meshlet stat`` and ``meshlet edges`` scrape a
proxy's admin ``/metrics`` twice, ``window_deltas`` turns the two scrapes into what happened in
between (counters subtract, with Prometheus' reset rule; gauges keep their latest value), and
``histogram_quantile`` is Prometheus' own interpolation so a quantile read from the admin port
agrees with one read from Prometheus.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Labels",
    "MetricsFormatError",
    "Scrape",
    "SeriesKey",
    "histogram_quantile",
    "labels_of",
    "parse_metrics",
    "window_deltas",
]

Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted by name, so equal label sets compare and hash equal."""

SeriesKey = tuple[str, Labels]
"""A sample's name (``response_total``, ``response_latency_ms_bucket``) and its labels."""


class MetricsFormatError(ValueError):
    """The text is not the Prometheus exposition format."""


@dataclass(frozen=True, slots=True)
class Scrape:
    """One read of a ``/metrics`` page: every sample's value, and which samples are gauges."""

    values: Mapping[SeriesKey, float]
    gauges: frozenset[str]


def labels_of(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


def parse_metrics(text: str, keep: Callable[[str], bool] | None = None) -> Scrape:
    """Parse the text exposition format (what the proxy's admin port serves).

    ``keep`` picks the sample lines worth parsing (comment lines always stay): the parser costs
    ~100 µs a line and a proxy at its authority cap serves 30,000 lines, most of them latency
    buckets of series the caller does not read.
    """
    if keep is not None:
        text = "\n".join(line for line in text.split("\n") if line[:1] == "#" or keep(line))
        text += "\n"
    values: dict[SeriesKey, float] = {}
    gauges: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, labels_of(sample.labels))
                values[key] = values.get(key, 0.0) + float(sample.value)
                if family.type in {"gauge", "unknown", "untyped"}:
                    gauges.add(sample.name)
    except (ValueError, TypeError, IndexError) as error:
        raise MetricsFormatError(f"not Prometheus text format: {error}") from error
    return Scrape(values=values, gauges=frozenset(gauges))


def window_deltas(before: Scrape, after: Scrape) -> dict[SeriesKey, float]:
    """What happened between two scrapes of the same proxy.

    Counters (and histogram buckets, sums and counts) become their increase; a counter that went
    down was reset (the proxy restarted), so its increase is its new value, as Prometheus'
    ``increase()`` counts it. A series first seen in ``after`` started from zero inside the
    window. Gauges keep their value at ``after``.
    """
    deltas: dict[SeriesKey, float] = {}
    for key, value in after.values.items():
        if key[0] in after.gauges:
            deltas[key] = value
            continue
        previous = before.values.get(key, 0.0)
        deltas[key] = value - previous if value >= previous else value
    return deltas


def histogram_quantile(quantile: float, buckets: Iterable[tuple[float, float]]) -> float:  # noqa: PLR0911 (mirrors Go)
    """Prometheus' ``histogram_quantile`` over ``(upper bound, cumulative count)`` pairs.

    Linear interpolation inside the bucket holding the rank, as ``promql/quantile.go``
    ``bucketQuantile`` does: NaN without a ``+Inf`` bucket, with fewer than two buckets or with no
    observations; the highest finite bound when the rank falls in the ``+Inf`` bucket; counts
    that decrease (a scrape racing an increment) are made monotonic first.
    """
    if math.isnan(quantile):
        return math.nan
    if quantile < 0:
        return -math.inf
    if quantile > 1:
        return math.inf
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    monotonic: list[tuple[float, float]] = []
    highest = 0.0
    for bound, count in ordered:
        highest = max(highest, count)
        monotonic.append((bound, highest))
    observations = monotonic[-1][1]
    if observations <= 0:
        return math.nan
    rank = quantile * observations
    index = next(i for i, (_, count) in enumerate(monotonic) if count >= rank)
    if index == len(monotonic) - 1:
        return monotonic[-2][0]
    if index == 0 and monotonic[0][0] <= 0:
        return monotonic[0][0]
    start, end, count = 0.0, monotonic[index][0], monotonic[index][1]
    if index > 0:
        start = monotonic[index - 1][0]
        count -= monotonic[index - 1][1]
        rank -= monotonic[index - 1][1]
    if count <= 0:
        return math.nan  # only at rank 0 over empty lower buckets; Go's 0/0
    return start + (end - start) * (rank / count)
