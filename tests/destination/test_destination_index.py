"""The pure core: parse objects, index them, answer snapshots and diffs, skip bad objects."""

from __future__ import annotations

from typing import Any

import pytest

from destination.authority import IPTarget, ServiceTarget, Target, parse_authority
from destination.endpoints import EndpointSet, diff_lines, identity_function
from destination.events import Changed, Relisted
from destination.index import Applied, ClusterState, topics_for

from .dst_objects import endpoint, endpoint_slice, pod, service

WEB = ServiceTarget("shop", "web", 80)
WEB_IDENTITY = "web.shop.serviceaccount.identity.meshlet.cluster.local"


def new_state() -> ClusterState:
    identity = identity_function(control_plane_ns="meshlet", trust_domain="cluster.local")
    return ClusterState(cluster_domain="cluster.local", identity_for=identity)


def add(state: ClusterState, kind: Any, obj: dict[str, Any]) -> Applied:
    return state.apply(Changed(kind, "ADDED", obj))


def addresses(state: ClusterState, target: Target = WEB) -> list[tuple[str, int]]:
    return sorted(state.endpoints(target).endpoints)


def web_with_pods(state: ClusterState, count: int) -> None:
    add(state, "Service", service("web"))
    for i in range(count):
        add(state, "Pod", pod(f"web-{i}", f"10.1.0.{i + 1}"))
    eps = [endpoint(f"10.1.0.{i + 1}", f"web-{i}") for i in range(count)]
    add(state, "EndpointSlice", endpoint_slice("web-a", "web", eps))


def test_snapshot_carries_identity_hint_and_labels() -> None:
    state = new_state()
    web_with_pods(state, 1)
    current = state.endpoints(WEB)
    assert current.exists
    (only,) = current.endpoints.values()
    assert only.as_json() == {
        "address": "10.1.0.1",
        "port": 8080,
        "weight": 10000,
        "identity": WEB_IDENTITY,
        "protocol_hint": "h2",
        "labels": {
            "namespace": "shop",
            "service": "web",
            "pod": "web-0",
            "deployment": "web",
            "serviceaccount": "web",
            "control_plane_ns": "meshlet",
        },
    }


def test_unmeshed_and_foreign_mesh_pods_get_no_identity() -> None:
    state = new_state()
    add(state, "Service", service("web"))
    add(state, "Pod", pod("plain", "10.1.0.1", meshed=False, owner=None))
    foreign = pod("other", "10.1.0.2")
    foreign["metadata"]["labels"]["meshlet.io/control-plane-ns"] = "another-mesh"
    add(state, "Pod", foreign)
    eps = [endpoint("10.1.0.1", "plain"), endpoint("10.1.0.2", "other")]
    add(state, "EndpointSlice", endpoint_slice("web-a", "web", eps))
    found = state.endpoints(WEB).endpoints
    assert found[("10.1.0.1", 8080)].identity is None
    assert found[("10.1.0.1", 8080)].protocol_hint is None
    assert found[("10.1.0.2", 8080)].identity is None


def test_opaque_port_annotation_gives_opaque_hint() -> None:
    state = new_state()
    add(state, "Service", service("db", ports=[("pg", 5432)]))
    add(
        state,
        "Pod",
        pod("db-0", "10.1.0.9", annotations={"config.meshlet.io/opaque-ports": "5432"}),
    )
    slice_ = endpoint_slice("db-a", "db", [endpoint("10.1.0.9", "db-0")], ports=[("pg", 5432)])
    add(state, "EndpointSlice", slice_)
    (only,) = state.endpoints(ServiceTarget("shop", "db", 5432)).endpoints.values()
    assert only.protocol_hint == "opaque"
    assert only.as_json()["opaque_transport_port"] == 4143


def test_scaling_0_3_1_as_diffs() -> None:
    state = new_state()
    add(state, "Service", service("web"))
    for i in range(3):
        add(state, "Pod", pod(f"web-{i}", f"10.1.0.{i + 1}"))
    add(state, "EndpointSlice", endpoint_slice("web-a", "web", []))
    zero = state.endpoints(WEB)
    assert diff_lines(None, zero) == [{"type": "snapshot", "exists": True, "endpoints": []}]
    three_eps = [endpoint(f"10.1.0.{i + 1}", f"web-{i}") for i in range(3)]
    state.apply(Changed("EndpointSlice", "MODIFIED", endpoint_slice("web-a", "web", three_eps)))
    three = state.endpoints(WEB)
    (added,) = diff_lines(zero, three)
    assert added["type"] == "add"
    assert [e["address"] for e in added["endpoints"]] == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    one_eps = [endpoint("10.1.0.2", "web-1")]
    state.apply(Changed("EndpointSlice", "MODIFIED", endpoint_slice("web-a", "web", one_eps)))
    one = state.endpoints(WEB)
    assert diff_lines(three, one) == [
        {
            "type": "remove",
            "endpoints": [
                {"address": "10.1.0.1", "port": 8080},
                {"address": "10.1.0.3", "port": 8080},
            ],
        }
    ]
    assert diff_lines(one, one) == []


def test_slices_split_and_duplicates_deduplicated() -> None:
    state = new_state()
    add(state, "Service", service("web"))
    a = [endpoint("10.1.0.1"), endpoint("10.1.0.2")]
    b = [endpoint("10.1.0.2"), endpoint("10.1.0.3")]
    add(state, "EndpointSlice", endpoint_slice("web-b", "web", b))
    add(state, "EndpointSlice", endpoint_slice("web-a", "web", a))
    assert addresses(state) == [("10.1.0.1", 8080), ("10.1.0.2", 8080), ("10.1.0.3", 8080)]
    state.apply(Changed("EndpointSlice", "DELETED", endpoint_slice("web-a", "web", a)))
    assert addresses(state) == [("10.1.0.2", 8080), ("10.1.0.3", 8080)]


def test_ports_by_name_and_unknown_port() -> None:
    state = new_state()
    add(state, "Service", service("web", ports=[("http", 80), ("admin", 9000)]))
    add(
        state,
        "EndpointSlice",
        endpoint_slice("web-a", "web", [endpoint("10.1.0.1")], ports=[("http", 8080)]),
    )
    add(
        state,
        "EndpointSlice",
        endpoint_slice(
            "web-b", "web", [endpoint("10.1.0.2")], ports=[("http", 8081), ("admin", 9901)]
        ),
    )
    assert addresses(state) == [("10.1.0.1", 8080), ("10.1.0.2", 8081)]
    assert addresses(state, ServiceTarget("shop", "web", 9000)) == [("10.1.0.2", 9901)]
    no_port = state.endpoints(ServiceTarget("shop", "web", 1234))
    assert no_port.exists
    assert not no_port.endpoints


def test_not_ready_endpoints_are_left_out_and_nil_ready_is_ready() -> None:
    state = new_state()
    add(state, "Service", service("web"))
    eps = [endpoint("10.1.0.1", ready=False), endpoint("10.1.0.2", ready=None)]
    add(state, "EndpointSlice", endpoint_slice("web-a", "web", eps))
    assert addresses(state) == [("10.1.0.2", 8080)]


def test_statefulset_hostname_authority() -> None:
    state = new_state()
    add(state, "Service", service("db", cluster_ip=None, ports=[("pg", 5432)]))
    eps = [endpoint("10.1.0.1", hostname="db-0"), endpoint("10.1.0.2", hostname="db-1")]
    add(state, "EndpointSlice", endpoint_slice("db-a", "db", eps, ports=[("pg", 5432)]))
    target = parse_authority("db-1.db.shop.svc.cluster.local:5432", cluster_domain="cluster.local")
    assert isinstance(target, ServiceTarget)
    assert addresses(state, target) == [("10.1.0.2", 5432)]
    missing = ServiceTarget("shop", "db", 5432, hostname="db-7")
    assert state.endpoints(missing) == EndpointSet(exists=True, endpoints={})


def test_cluster_ip_authority_follows_the_service() -> None:
    state = new_state()
    web_with_pods(state, 2)
    by_ip = IPTarget("10.96.0.10", 80)
    assert addresses(state, by_ip) == addresses(state)
    applied = state.apply(Changed("Service", "MODIFIED", service("web", cluster_ip="10.96.0.99")))
    assert ("ip", "10.96.0.10") in applied.topics
    assert ("ip", "10.96.0.99") in applied.topics
    assert not state.endpoints(by_ip).exists
    assert addresses(state, IPTarget("10.96.0.99", 80)) == addresses(state)


def test_pod_ip_authority_is_one_endpoint() -> None:
    state = new_state()
    web_with_pods(state, 2)
    current = state.endpoints(IPTarget("10.1.0.2", 7000))
    assert current.exists
    (only,) = current.endpoints.values()
    assert (only.address, only.port, only.identity) == ("10.1.0.2", 7000, WEB_IDENTITY)
    assert "service" not in dict(only.labels)
    assert not state.endpoints(IPTarget("10.9.9.9", 80)).exists


def test_unknown_service_then_appears() -> None:
    state = new_state()
    assert state.endpoints(WEB) == EndpointSet(exists=False, endpoints={})
    applied = add(state, "EndpointSlice", endpoint_slice("web-a", "web", [endpoint("10.1.0.1")]))
    assert [bad.reason for bad in applied.skipped] == ["unknown_service"]
    assert not state.endpoints(WEB).exists
    applied = add(state, "Service", service("web"))
    assert topics_for(WEB) <= applied.topics
    assert addresses(state) == [("10.1.0.1", 8080)]
    state.apply(Changed("Service", "DELETED", service("web")))
    assert not state.endpoints(WEB).exists


def test_pod_change_updates_endpoint_metadata() -> None:
    state = new_state()
    web_with_pods(state, 1)
    before = state.endpoints(WEB)
    applied = state.apply(
        Changed("Pod", "MODIFIED", pod("web-0", "10.1.0.1", serviceaccount="api"))
    )
    assert topics_for(WEB) <= applied.topics
    (line,) = diff_lines(before, state.endpoints(WEB))
    assert line["type"] == "add"
    assert (
        line["endpoints"][0]["identity"] == "api.shop.serviceaccount.identity.meshlet.cluster.local"
    )


def test_unrelated_changes_touch_other_topics_only() -> None:
    state = new_state()
    web_with_pods(state, 1)
    applied = add(state, "Service", service("api", cluster_ip="10.96.0.20"))
    assert applied.topics == {("svc", "shop", "api"), ("ip", "10.96.0.20")}
    same = state.apply(
        Changed("Service", "MODIFIED", service("api", cluster_ip="10.96.0.20", rv="7"))
    )
    assert same.topics == set(), "an unchanged object (new resourceVersion) wakes nobody"


def test_relist_replaces_the_kind() -> None:
    state = new_state()
    web_with_pods(state, 2)
    applied = state.apply(Relisted("Pod", (pod("web-1", "10.1.0.2"),)))
    assert ("ip", "10.1.0.1") in applied.topics
    assert set(state.pods) == {("shop", "web-1")}
    endpoints = state.endpoints(WEB).endpoints
    assert endpoints[("10.1.0.1", 8080)].identity is None  # its pod is gone
    assert endpoints[("10.1.0.2", 8080)].identity == WEB_IDENTITY


@pytest.mark.parametrize(
    ("kind", "obj", "reason"),
    [
        pytest.param("Service", {"metadata": {"name": "x"}}, "missing_metadata", id="svc-no-ns"),
        pytest.param("Service", "not a dict", "missing_metadata", id="svc-not-a-dict"),
        pytest.param(
            "Service",
            {"metadata": {"name": "x", "namespace": "a"}},
            "missing_spec",
            id="svc-no-spec",
        ),
        pytest.param("Service", service("x", ports=[("http", 0)]), "bad_port", id="svc-port-0"),
        pytest.param(
            "EndpointSlice",
            {**endpoint_slice("s", "web", []), "metadata": {"name": "s", "namespace": "shop"}},
            "no_service_label",
            id="slice-no-label",
        ),
        pytest.param(
            "EndpointSlice",
            {**endpoint_slice("s", "web", []), "addressType": "FQDN"},
            "unsupported_address_type",
            id="slice-fqdn",
        ),
        pytest.param(
            "EndpointSlice",
            endpoint_slice("s", "web", [{"addresses": ["not-an-ip"]}]),
            "bad_endpoint",
            id="slice-bad-address",
        ),
        pytest.param(
            "EndpointSlice",
            endpoint_slice("s", "web", [{"conditions": {}}]),
            "bad_endpoint",
            id="slice-no-addresses",
        ),
        pytest.param(
            "Pod",
            pod("p", "10.1.0.1", annotations={"config.meshlet.io/opaque-ports": "x,99999"}),
            "bad_opaque_ports",
            id="pod-bad-opaque-ports",
        ),
    ],
)
def test_bad_objects_are_skipped_with_a_reason(kind: Any, obj: Any, reason: str) -> None:
    state = new_state()
    web_with_pods(state, 1)
    before = state.counts()
    applied = add(state, kind, obj)
    assert [bad.reason for bad in applied.skipped] == [reason]
    assert applied.skipped[0].describe().startswith(f"skipped {kind}")
    assert state.counts() == before
    assert addresses(state) == [("10.1.0.1", 8080)]


def test_a_bad_update_forgets_the_last_good_version() -> None:
    state = new_state()
    web_with_pods(state, 1)
    broken = endpoint_slice("web-a", "web", [{"addresses": ["nope"]}])
    applied = state.apply(Changed("EndpointSlice", "MODIFIED", broken))
    assert applied.skipped
    assert topics_for(WEB) <= applied.topics
    assert addresses(state) == []


def test_deletion_without_a_name_is_skipped() -> None:
    state = new_state()
    applied = state.apply(Changed("Pod", "DELETED", {"metadata": {}}))
    assert [bad.reason for bad in applied.skipped] == ["missing_metadata"]


def test_replicaset_owner_reported_as_deployment_for_unmeshed_pods() -> None:
    state = new_state()
    add(state, "Service", service("web"))
    raw = pod("web-abc-x", "10.1.0.1", meshed=False, owner=None)
    raw["metadata"]["labels"]["pod-template-hash"] = "abc"
    raw["metadata"]["ownerReferences"] = [
        {"kind": "ReplicaSet", "name": "web-abc", "controller": True}
    ]
    add(state, "Pod", raw)
    add(state, "EndpointSlice", endpoint_slice("web-a", "web", [endpoint("10.1.0.1", "web-abc-x")]))
    (only,) = state.endpoints(WEB).endpoints.values()
    assert dict(only.labels)["deployment"] == "web"
