"""Pure pieces of the outbound mesh client: Service authorities, dst labels, settings."""

from __future__ import annotations

import pytest

from proxy.metrics import Metrics, dst_labels
from proxy.outbound import mesh_authority
from proxy.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("host", "authority"),
    [
        (b"web.shop.svc.cluster.local:8080", "web.shop.svc.cluster.local:8080"),
        (b"web.shop.svc.cluster.local", "web.shop.svc.cluster.local:80"),
        (b"Web.Shop.svc.cluster.local.:81", "web.shop.svc.cluster.local:81"),
        (b"example.org", None),
        (b"10.96.0.1:80", None),
        (b"svc.cluster.local", None),
        (b"web.shop.svc.cluster.local:99999", None),
        (b"web.shop.svc.cluster.local:x", None),
        (b"\xff.svc.cluster.local", None),
    ],
)
def test_mesh_authority(host: bytes, authority: str | None) -> None:
    assert mesh_authority(host) == authority


def test_dst_labels_are_sorted_escaped_and_safe_names() -> None:
    text = dst_labels({"pod": 'web-"0"', "service": "web", "odd-name": "x"})
    assert text == ',dst_odd_name="x",dst_pod="web-\\"0\\"",dst_service="web"'
    assert dst_labels({}) == ""


def test_route_series_render_only_when_routes_exist() -> None:
    metrics = Metrics()
    assert b"route_request_total" not in metrics.render()
    labels = metrics.route_labels("outbound", "web.shop.svc.cluster.local:80", "GET /books")
    metrics.route_request(labels)
    metrics.route_response(labels, 200, "success", 3.0)
    text = metrics.render().decode()
    assert (
        'route_request_total{direction="outbound",dst="web.shop.svc.cluster.local:80",'
        'rt_route="GET /books"} 1'
    ) in text
    assert 'route_response_latency_ms_bucket{direction="outbound"' in text
    assert 'rt_route="GET /books",status_code="200",le="3"} 1' in text


def test_outbound_settings_are_read_and_validated() -> None:
    settings = load_settings(
        {
            "MESHLET_PROXY_OUTBOUND_FAILFAST_TIMEOUT": "250ms",
            "MESHLET_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT": "1m",
            "MESHLET_PROXY_OUTBOUND_MAX_IDLE_PER_ENDPOINT": "4",
            "MESHLET_PROXY_OUTBOUND_RETRY_BUFFER_BYTES": "0",
            "MESHLET_PROXY_OUTBOUND_HTTP2_PER_STREAM": "false",
        }
    )
    assert settings.outbound_http2_per_stream is False
    assert load_settings({}).outbound_http2_per_stream is True
    assert settings.outbound_failfast_timeout == 0.25
    assert settings.outbound_discovery_idle_timeout == 60
    assert settings.outbound_max_idle_per_endpoint == 4
    assert settings.outbound_retry_buffer_bytes == 0
    with pytest.raises(SettingsError, match="MESHLET_PROXY_OUTBOUND_FAILFAST_TIMEOUT"):
        load_settings({"MESHLET_PROXY_OUTBOUND_FAILFAST_TIMEOUT": "0s"})
    with pytest.raises(SettingsError, match="MESHLET_PROXY_OUTBOUND_RETRY_BUFFER_BYTES"):
        load_settings({"MESHLET_PROXY_OUTBOUND_RETRY_BUFFER_BYTES": "-1"})
