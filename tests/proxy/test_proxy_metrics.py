"""The metrics registry: Linkerd's families, buckets and labels in the text format."""

from __future__ import annotations

from proxy.metrics import LATENCY_BUCKETS_MS, MAX_AUTHORITIES, Metrics, classify


def test_http_families_render_with_linkerd_labels() -> None:
    metrics = Metrics()
    labels = metrics.http_labels("outbound", b'web.shop:80"')
    metrics.request(labels)
    metrics.response_headers(labels, 200, 3.5)
    metrics.response_end(labels, 200, classify(200, None))
    text = metrics.render().decode()
    series = (
        'direction="outbound",authority="web.shop:80\\"",tls="no_identity",no_tls_reason="disabled"'
    )
    assert f"request_total{{{series}}} 1" in text
    assert f'response_total{{{series},status_code="200",classification="success"}} 1' in text
    assert f'response_latency_ms_bucket{{{series},status_code="200",le="3"}} 0' in text
    assert f'response_latency_ms_bucket{{{series},status_code="200",le="4"}} 1' in text
    assert f'response_latency_ms_bucket{{{series},status_code="200",le="+Inf"}} 1' in text
    assert f'response_latency_ms_count{{{series},status_code="200"}} 1' in text
    assert LATENCY_BUCKETS_MS[-1] == 50000


def test_classification() -> None:
    assert classify(503, None) == "failure"
    assert classify(200, 0) == "success"
    assert classify(200, 14) == "failure"
    assert classify(404, None) == "success"


def test_tcp_counts_include_open_and_closed_connections() -> None:
    metrics = Metrics()
    first = metrics.tcp_open("inbound", "src", "10.0.0.1:80")
    second = metrics.tcp_open("inbound", "src", "10.0.0.1:80")
    first.read, first.written = 10, 20
    second.read = 5
    metrics.tcp_close(first)
    metrics.tcp_close(first)  # counted once
    text = metrics.render().decode()
    series = 'direction="inbound",peer="src",target_addr="10.0.0.1:80",tls="no_identity"'
    assert f'tcp_open_total{{{series},no_tls_reason="disabled"}} 2' in text
    assert f'tcp_open_connections{{{series},no_tls_reason="disabled"}} 1' in text
    assert f'tcp_read_bytes_total{{{series},no_tls_reason="disabled"}} 15' in text
    assert f'tcp_write_bytes_total{{{series},no_tls_reason="disabled"}} 20' in text
    assert f'tcp_close_total{{{series},no_tls_reason="disabled",errno=""}} 1' in text


def test_authority_cardinality_is_capped() -> None:
    metrics = Metrics()
    for index in range(MAX_AUTHORITIES + 5):
        metrics.request(metrics.http_labels("inbound", f"host-{index}".encode()))
    text = metrics.render().decode()
    assert 'authority="overflow"' in text
    assert text.count("request_total{") == MAX_AUTHORITIES + 1
