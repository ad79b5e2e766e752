"""``meshlet stat``'s aggregation: pods' windows and Prometheus answers in, rows out."""

from __future__ import annotations

import json

import pytest

from meshlet.metricsource import PodWindow
from meshlet.metricsread import parse_metrics, window_deltas
from meshlet.stat import (
    StatRow,
    format_table,
    rows_from_pods,
    rows_from_prometheus,
    rows_json,
    stat_line,
    stat_queries,
)
from tests.stat.stat_canned import Page, http, tcp


def pod(
    workload: str, before: Page, after: Page, seconds: float = 10.0, namespace: str = ""
) -> PodWindow:
    deltas = window_deltas(parse_metrics(before.text()), parse_metrics(after.text()))
    return PodWindow("127.0.0.1:4191", namespace, workload, workload + "-pod", seconds, deltas)


def web_pages() -> tuple[Page, Page]:
    """web served 100 inbound requests before the window; in it 18 fast successes, 2 slow 500s."""
    before, after = Page(), Page()
    inbound = http("inbound", "web.default.svc.cluster.local:8080")
    for page in (before, after):
        page.serve(inbound, 200, 2.5, times=100)
    after.serve(inbound, 200, 2.5, times=18)
    after.serve(inbound, 503, 250, times=2)
    # Outbound traffic is the other workload's inbound: it must not count here.
    after.serve(http("outbound", "api.default.svc.cluster.local:80"), 500, 9, times=50)
    conn = tcp("inbound", "src", "10.0.0.1:8080")
    before.opened[conn] = after.opened[conn] = 4
    after.open_now[conn] = 2
    after.opened[tcp("outbound", "dst", "10.0.0.2:80")] = 9
    after.open_now[tcp("outbound", "dst", "10.0.0.2:80")] = 9
    return before, after


def test_rows_from_one_pod() -> None:
    (row,) = rows_from_pods([pod("web", *web_pages())])
    assert row.name == "web"
    assert (row.meshed, row.pods) == (1, 1)
    assert row.success == pytest.approx(0.9)
    assert row.rps == pytest.approx(2.0)
    # 18 in (2, 3]; 2 in (200, 300]: p50 = 2 + 1 * 10/18, p95 = rank 19 -> 200 + 100 * 1/2.
    assert row.latency_ms[0] == pytest.approx(2 + 10 / 18)
    assert row.latency_ms[1] == pytest.approx(250)
    assert row.latency_ms[2] == pytest.approx(290)
    assert row.tcp_connections == 2


def test_rows_sum_pods_of_one_workload_and_sort() -> None:
    web = pod("web", *web_pages())
    idle_before, idle_after = Page(), Page()
    idle = pod("idle", idle_before, idle_after)
    rows = rows_from_pods([web, idle, pod("web", *web_pages(), seconds=5.0)])
    assert [row.name for row in rows] == ["idle", "web"]
    idle_row, web_row = rows
    assert idle_row == StatRow("", "idle", 1, 1, None, None, (None, None, None), 0)
    assert (web_row.meshed, web_row.pods) == (2, 2)
    assert web_row.rps == pytest.approx(2.0 + 4.0)
    assert web_row.tcp_connections == 4
    assert web_row.success == pytest.approx(0.9)


def test_table_formats_like_linkerd() -> None:
    rows = rows_from_pods([pod("web", *web_pages()), pod("idle", Page(), Page())])
    assert format_table(rows).splitlines() == [
        "NAME   MESHED   SUCCESS      RPS   LATENCY_P50   LATENCY_P95   LATENCY_P99   TCP_CONN",
        "idle      1/1         -        -             -             -             -          0",
        "web       1/1    90.00%   2.0rps           2ms         250ms         290ms          2",
    ]


def test_table_adds_namespace_when_known() -> None:
    table = format_table(rows_from_pods([pod("web", *web_pages(), namespace="shop")]))
    assert table.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert table.splitlines()[1].split()[:2] == ["shop", "web"]


def test_json_rows() -> None:
    (row,) = rows_json(rows_from_pods([pod("web", *web_pages(), namespace="shop")]))
    assert json.loads(json.dumps(row)) == {
        "namespace": "shop",
        "name": "web",
        "meshed": "1/1",
        "success": pytest.approx(0.9),
        "rps": pytest.approx(2.0),
        "latency_ms_p50": pytest.approx(2 + 10 / 18),
        "latency_ms_p95": pytest.approx(250),
        "latency_ms_p99": pytest.approx(290),
        "tcp_open_connections": 2,
    }


def test_stat_queries_are_linkerds() -> None:
    queries = stat_queries("deployment", "1m", "shop")
    assert queries["responses"] == (
        'sum(increase(response_total{direction="inbound",namespace="shop"}[1m])) '
        "by (namespace, deployment, classification, tls)"
    )
    assert queries["p0.95"] == (
        'histogram_quantile(0.95, sum(irate(response_latency_ms_bucket{direction="inbound",'
        'namespace="shop"}[1m])) by (le, namespace, deployment))'
    )
    assert queries["tcp"] == (
        'sum(tcp_open_connections{direction="inbound",namespace="shop"}) by (namespace, deployment)'
    )
    assert queries["up"] == 'up{job="meshlet-proxy",namespace="shop"}'
    assert 'namespace="' not in stat_queries("pod", "10s")["responses"]


def test_rows_from_prometheus() -> None:
    web = {"namespace": "shop", "deployment": "web"}
    answers = {
        "up": [
            ({**web, "pod": "web-1"}, 1.0),
            ({**web, "pod": "web-2"}, 0.0),
            ({"namespace": "x"}, 1.0),
        ],
        "responses": [
            ({**web, "classification": "success", "tls": "true"}, 54.0),
            ({**web, "classification": "failure", "tls": "true"}, 6.0),
        ],
        "tcp": [(web, 3.0)],
        "p0.5": [(web, 12.5)],
        "p0.95": [(web, 95.0)],
        "p0.99": [(web, float("nan"))],
    }
    (row,) = rows_from_prometheus("deployment", 60.0, answers)
    assert row == StatRow(
        "shop", "web", 1, 2, pytest.approx(0.9), pytest.approx(1.0), (12.5, 95.0, None), 3
    )


def test_parsing_only_stat_lines_gives_the_same_rows() -> None:
    before, after = web_pages()
    info = 'namespace="shop",pod="web-1",workload="web"'
    before.info = after.info = info
    # A client-chosen authority cannot make an outbound line look inbound (quotes are escaped).
    after.serve(http("outbound", 'evil",direction="inbound'), 200, 1, times=3)
    whole = rows_from_pods([pod("web", before, after)])
    deltas = window_deltas(
        parse_metrics(before.text(), stat_line), parse_metrics(after.text(), stat_line)
    )
    assert rows_from_pods([PodWindow("a", "", "web", "web-pod", 10.0, deltas)]) == whole
    assert all(("direction", "inbound") in labels for _, labels in deltas)
