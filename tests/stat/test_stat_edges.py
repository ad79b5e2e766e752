"""``meshlet edges``: flows in, edges out, row by row."""

from __future__ import annotations

import pytest

from meshlet.edges import (
    Edge,
    Flow,
    edge_queries,
    edges_from_flows,
    edges_json,
    flows_from_pods,
    flows_from_prometheus,
    format_edges,
    parse_identity,
)
from meshlet.metricsource import PodWindow
from meshlet.metricsread import parse_metrics, window_deltas
from tests.stat.stat_canned import API_ID, WEB_ID, Page, http, tcp

MTLS_OUT = f'tls="true",server_id="{API_ID}"'
DST_API = 'dst_namespace="default",dst_deployment="api",dst_service="api"'
TO_API = {"dst_namespace": "default", "dst_deployment": "api"}
TO_API_SVC = {"dst_namespace": "default", "dst_service": "api"}
SHOP_WEB_ID = "web.shop.serviceaccount.identity.meshlet.cluster.local"
API_AUTHORITY = "api.default.svc.cluster.local:80"


def out(ns: str, workload: str, **labels: str) -> Flow:
    return Flow(ns, workload, "outbound", {"direction": "outbound", **labels})


def into(ns: str, workload: str, **labels: str) -> Flow:
    return Flow(ns, workload, "inbound", {"direction": "inbound", **labels})


@pytest.mark.parametrize(
    ("flows", "expected"),
    [
        pytest.param(
            [
                out("default", "web", **TO_API, tls="true", server_id=API_ID),
                into("default", "api", tls="true", client_id=WEB_ID),
            ],
            [Edge("web", "api", "default", "default", True, WEB_ID, API_ID)],
            id="both-ends-joined",
        ),
        pytest.param(
            [out("default", "web", **TO_API, tls="true", server_id=API_ID)],
            [Edge("web", "api", "default", "default", True, "", API_ID)],
            id="outbound-only",
        ),
        pytest.param(
            [into("default", "api", tls="true", client_id=WEB_ID)],
            [Edge("web", "api", "default", "default", True, WEB_ID, "")],
            id="inbound-only-names-source-by-identity",
        ),
        pytest.param(
            [
                out("default", "web", authority=API_AUTHORITY, tls="no_identity"),
                into("default", "api", tls="no_identity", no_tls_reason="disabled"),
            ],
            [Edge("web", "api", "default", "default", False, "", "")],
            id="plaintext-destination-from-authority",
        ),
        pytest.param(
            [
                out("default", "web", **TO_API_SVC, tls="true", server_id=API_ID),
                out("default", "web", **TO_API_SVC, tls="no_identity"),
            ],
            [Edge("web", "api", "default", "default", False, "", API_ID)],
            id="one-plaintext-series-makes-edge-unsecured",
        ),
        pytest.param(
            [out("default", "web", authority="example.com:443", tls="no_identity")],
            [Edge("web", "example.com:443", "default", "", False, "", "")],
            id="outside-the-cluster",
        ),
        pytest.param(
            [
                out("shop", "web", **TO_API, tls="true", server_id=API_ID),
                into("default", "api", tls="true", client_id=SHOP_WEB_ID),
                into("default", "api", tls="true", client_id=WEB_ID),
            ],
            [
                Edge(
                    "web", "api", "shop", "default", True,
                    SHOP_WEB_ID, API_ID,
                ),
                Edge("web", "api", "default", "default", True, WEB_ID, ""),
            ],
            id="client-matched-by-namespace",
        ),
    ],
)  # fmt: skip
def test_edges_from_flows(flows: list[Flow], expected: list[Edge]) -> None:
    assert edges_from_flows(flows) == expected


def test_parse_identity() -> None:
    assert parse_identity(WEB_ID) == ("web", "default")
    assert parse_identity("spiffe-ish") is None


def test_flows_from_the_proxy_page_in_the_window() -> None:
    before, after = Page(), Page()
    to_api = http("outbound", "api.default.svc.cluster.local:80", f"{MTLS_OUT},{DST_API}")
    old = http("outbound", "old.default.svc.cluster.local:80")
    for page in (before, after):
        page.serve(old, 200, 1, times=3)  # no traffic inside the window: no edge
    after.serve(to_api, 200, 1, times=2)
    after.opened[tcp("outbound", "dst", "10.0.0.9:80")] = 1  # plain TCP names no peer: no edge
    after.opened[tcp("outbound", "dst", "10.0.0.2:6379", f"{MTLS_OUT},{DST_API}")] = 1
    deltas = window_deltas(parse_metrics(before.text()), parse_metrics(after.text()))
    flows = flows_from_pods([PodWindow("127.0.0.1:4191", "default", "web", "web-1", 1.0, deltas)])
    assert {f.labels.get("target_addr") or f.labels.get("authority") for f in flows} == {
        "api.default.svc.cluster.local:80",
        "10.0.0.2:6379",
    }
    assert edges_from_flows(flows) == [Edge("web", "api", "default", "default", True, "", API_ID)]


def test_prometheus_queries_and_flows() -> None:
    queries = edge_queries("deployment", "1m")
    assert queries["outbound"] == (
        'sum(increase(response_total{direction="outbound"}[1m])) by (namespace, deployment, '
        "dst_namespace, dst_deployment, dst_service, tls, server_id, authority)"
    )
    assert queries["inbound"] == (
        'sum(increase(response_total{direction="inbound"}[1m])) '
        "by (namespace, deployment, client_id, tls)"
    )
    answers = {
        "outbound": [
            ({"namespace": "default", "deployment": "web", "dst_namespace": "default",
              "dst_deployment": "api", "tls": "true", "server_id": API_ID}, 12.0),
            ({"namespace": "default", "deployment": "", "dst_deployment": "api"}, 5.0),
            ({"namespace": "default", "deployment": "web", "dst_deployment": "gone"}, 0.0),
        ],
        "inbound_tcp": [
            ({"namespace": "default", "deployment": "api", "tls": "true", "client_id": WEB_ID}, 1.0)
        ],
    }  # fmt: skip
    edges = edges_from_flows(flows_from_prometheus("deployment", answers))
    assert edges == [Edge("web", "api", "default", "default", True, WEB_ID, API_ID)]


def test_format_and_json() -> None:
    edges = [
        Edge("web", "api", "default", "default", True, WEB_ID, API_ID),
        Edge("web", "example.com:443", "default", "", False, "", ""),
    ]
    assert format_edges(edges).splitlines() == [
        "SRC   DST               SRC_NS    DST_NS    SECURED   CLIENT_ID"
        + " " * (len(WEB_ID) - len("CLIENT_ID") + 3)
        + "SERVER_ID",
        f"web   api               default   default   √         {WEB_ID}   {API_ID}",
        "web   example.com:443   default   -         ×         -"  # noqa: RUF001
        + " " * (len(WEB_ID) - 1 + 3)
        + "-",
    ]
    assert edges_json(edges)[1] == {
        "src": "web",
        "dst": "example.com:443",
        "src_namespace": "default",
        "dst_namespace": "",
        "secured": False,
        "client_id": "",
        "server_id": "",
    }
