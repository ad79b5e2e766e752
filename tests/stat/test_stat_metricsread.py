"""Parsing the proxy's page, subtracting scrapes, and Prometheus' histogram_quantile, row by row."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlet.metricsread import (
    MetricsFormatError,
    histogram_quantile,
    labels_of,
    parse_metrics,
    window_deltas,
)
from tests.stat.stat_canned import NO_TLS, Page, http, tcp

INF = math.inf


@pytest.mark.parametrize(
    ("quantile", "buckets", "expected"),
    [
        pytest.param(0.5, [(1, 1), (2, 3), (INF, 4)], 1.5, id="interpolates-inside-bucket"),
        pytest.param(0.25, [(1, 1), (2, 3), (INF, 4)], 1.0, id="rank-at-first-bound"),
        pytest.param(0.99, [(1, 1), (2, 3), (INF, 4)], 2.0, id="inf-bucket-gives-highest-bound"),
        pytest.param(0.5, [(INF, 4), (2, 3), (1, 1)], 1.5, id="unsorted-input"),
        pytest.param(0.5, [(10, 0), (20, 10), (INF, 10)], 15.0, id="second-bucket-from-its-start"),
        pytest.param(0.95, [(5, 100), (10, 100), (INF, 100)], 4.75, id="all-in-first-bucket"),
        pytest.param(0.5, [(1, 2), (2, 1), (INF, 3)], 0.75, id="non-monotonic-made-monotonic"),
        pytest.param(0.5, [(-1, 2), (0, 2), (INF, 4)], -1.0, id="first-bound-not-positive"),
        pytest.param(-0.1, [(1, 1), (INF, 1)], -INF, id="quantile-below-zero"),
        pytest.param(1.1, [(1, 1), (INF, 1)], INF, id="quantile-above-one"),
    ],
)
def test_histogram_quantile(
    quantile: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    assert histogram_quantile(quantile, buckets) == pytest.approx(expected)


@pytest.mark.parametrize(
    "buckets",
    [
        pytest.param([(1, 1), (2, 3)], id="no-inf-bucket"),
        pytest.param([(INF, 3)], id="single-bucket"),
        pytest.param([], id="empty"),
        pytest.param([(1, 0), (INF, 0)], id="no-observations"),
    ],
)
def test_histogram_quantile_nan(buckets: list[tuple[float, float]]) -> None:
    assert math.isnan(histogram_quantile(0.5, buckets))
    assert math.isnan(histogram_quantile(math.nan, [(1, 1), (INF, 1)]))


def test_parse_reads_the_proxy_page() -> None:
    page = Page()
    inbound = http("inbound", "web.default.svc.cluster.local:8080")
    page.serve(inbound, 200, 3.5, times=2)
    conn = tcp("inbound", "src", "10.0.0.1:8080")
    page.opened[conn] = 3
    page.open_now[conn] = 1
    scrape = parse_metrics(page.text())
    labels = dict(
        labels_of({"direction": "inbound", "authority": "web.default.svc.cluster.local:8080"})
    )
    labels.update(tls="no_identity", no_tls_reason="disabled")
    response = {**labels, "status_code": "200", "classification": "success"}
    assert scrape.values[("response_total", labels_of(response))] == 2
    assert (
        scrape.values[
            ("response_latency_ms_bucket", labels_of({**labels, "status_code": "200", "le": "4"}))
        ]
        == 2
    )
    assert (
        scrape.values[
            ("response_latency_ms_bucket", labels_of({**labels, "status_code": "200", "le": "3"}))
        ]
        == 0
    )
    assert scrape.values[("tcp_open_connections", labels_of(dict(parse_pairs(conn))))] == 1
    assert scrape.gauges == {"tcp_open_connections"}


def parse_pairs(text: str) -> list[tuple[str, str]]:
    return [(k, v.strip('"')) for k, _, v in (part.partition("=") for part in text.split(","))]


def test_parse_rejects_garbage() -> None:
    with pytest.raises(MetricsFormatError):
        parse_metrics("request_total{direction=inbound} one\n")


def test_window_deltas_counters_resets_new_series_and_gauges() -> None:
    before, after = Page(), Page()
    old = http("inbound", "a:80")
    before.serve(old, 200, 1, times=5)
    after.serve(old, 200, 1, times=8)
    restarted = http("inbound", "b:80")
    before.serve(restarted, 200, 1, times=10)
    after.serve(restarted, 200, 1, times=4)  # the counter went down: the proxy restarted
    fresh = http("outbound", "c:80")
    after.serve(fresh, 500, 1, times=2)
    conn = tcp("inbound", "src", "10.0.0.1:80")
    before.opened[conn] = after.opened[conn] = 1
    before.open_now[conn], after.open_now[conn] = 7, 3
    deltas = window_deltas(parse_metrics(before.text()), parse_metrics(after.text()))

    def value(name: str, labels: str, **extra: str) -> float:
        return deltas[(name, labels_of({**dict(parse_pairs(labels)), **extra}))]

    assert value("request_total", old) == 3
    assert value("request_total", restarted) == 4
    assert value("response_total", fresh, status_code="500", classification="failure") == 2
    assert value("tcp_open_connections", conn) == 3  # a gauge keeps its latest value
    assert value("tcp_open_total", conn) == 0
    assert NO_TLS in old


@given(
    counts=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=26),
    q1=st.floats(min_value=0, max_value=1),
    q2=st.floats(min_value=0, max_value=1),
)
def test_quantile_monotonic_and_bounded(counts: list[int], q1: float, q2: float) -> None:
    bounds = [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000]
    bounds += [4000, 5000, 10000, 20000, 30000, 40000, 50000, 60000]
    cumulative, buckets = 0, []
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        buckets.append((float(bound), float(cumulative)))
    buckets.append((INF, float(cumulative)))
    low, high = sorted((q1, q2))
    a, b = histogram_quantile(low, buckets), histogram_quantile(high, buckets)
    if cumulative == 0 or len(buckets) < 2:
        assert math.isnan(a)
        return
    if math.isnan(a) or math.isnan(b):
        assert low == 0  # rank 0 over empty lower buckets, as Prometheus' 0/0
        return
    assert 0 <= a <= b <= buckets[-2][0]
