"""The canned pages are the proxy's own format: byte for byte against ``proxy.metrics``.

The proxy package is merged separately; until it is in the tree this test skips with the reason.
"""

from __future__ import annotations

import pytest

from meshlet.metricsource import PodWindow
from meshlet.metricsread import parse_metrics, window_deltas
from meshlet.stat import rows_from_pods
from tests.stat.stat_canned import Page, http, tcp

EVENTS = [(3.0, 200), (250.0, 503), (0.5, 200), (1000.0, 200)]


def test_canned_page_is_the_proxy_render() -> None:
    metrics_module = pytest.importorskip("proxy.metrics", reason="the proxy is not merged yet")
    metrics = metrics_module.Metrics()
    before = parse_metrics(metrics.render().decode())
    labels = metrics.http_labels("inbound", b"web.default.svc.cluster.local:8080")
    for latency, status in EVENTS:
        metrics.request(labels)
        metrics.response_headers(labels, status, latency)
        metrics.response_end(labels, status, metrics_module.classify(status, None))
    metrics.tcp_open("inbound", "src", "10.0.0.1:8080")
    closed = metrics.tcp_open("inbound", "src", "10.0.0.1:8080")
    metrics.tcp_close(closed, "")

    page = Page()
    for latency, status in EVENTS:
        page.serve(http("inbound", "web.default.svc.cluster.local:8080"), status, latency)
    conn = tcp("inbound", "src", "10.0.0.1:8080")
    page.opened[conn], page.open_now[conn], page.closed[(conn, "")] = 2, 1, 1
    page.read[conn] = page.written[conn] = 0
    text = metrics.render().decode()
    assert text == page.text()

    deltas = window_deltas(before, parse_metrics(text))
    (row,) = rows_from_pods([PodWindow("127.0.0.1:4191", "", "web", "web", 1.0, deltas)])
    assert row.success == 0.75
    assert row.tcp_connections == 1
