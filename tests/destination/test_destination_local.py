"""Local mode: the YAML format becomes the same objects the API server would send."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from destination.authority import ServiceTarget
from destination.endpoints import identity_function
from destination.events import Relisted, SourceError
from destination.index import ClusterState
from destination.local import LocalFileError, LocalFileSource, objects_from_yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "destination" / "example-local.yaml"


def state_from(text: str) -> ClusterState:
    identity = identity_function(control_plane_ns="meshlet", trust_domain="cluster.local")
    state = ClusterState(cluster_domain="cluster.local", identity_for=identity)
    for kind, objects in objects_from_yaml(text, control_plane_ns="meshlet").items():
        applied = state.apply(Relisted(kind, tuple(objects)))
        assert applied.skipped == []
    return state


def test_the_example_file() -> None:
    state = state_from(EXAMPLE.read_text())
    web = state.endpoints(ServiceTarget("shop", "web", 80))
    assert web.exists
    assert sorted(web.endpoints) == [("127.0.0.1", 8081), ("127.0.0.2", 8080)]
    first = web.endpoints[("127.0.0.1", 8081)]
    assert first.identity == "web.shop.serviceaccount.identity.meshlet.cluster.local"
    assert dict(first.labels)["deployment"] == "web"
    db = state.endpoints(ServiceTarget("shop", "db", 5432, hostname="db-0"))
    (only,) = db.endpoints.values()
    assert (only.address, only.port, only.protocol_hint) == ("127.0.0.4", 5432, "opaque")
    profile = state.profile(ServiceTarget("shop", "web", 80))
    assert profile["exists"] is True
    assert profile["routes"][0]["timeout"] == "300ms"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("services: [", "not valid YAML", id="yaml-syntax"),
        pytest.param("- a\n- b\n", "top level: expected a mapping", id="top-level-list"),
        pytest.param("servces: []", "unknown field(s) ['servces']", id="typo-top"),
        pytest.param(
            "services: [{namespace: a, ports: [{port: 80}]}]", "services[0].name", id="no-name"
        ),
        pytest.param("services: [{name: a}]", "at least one port", id="no-ports"),
        pytest.param(
            "services: [{name: a, ports: [{port: 70000}]}]",
            "services[0].ports[0].port",
            id="bad-port",
        ),
        pytest.param(
            "services: [{name: a, ports: [{port: 80}], endpoints: [{adress: 1.2.3.4}]}]",
            "unknown field(s) ['adress']",
            id="typo-endpoint",
        ),
        pytest.param(
            "services: [{name: a, ports: [{name: x, port: 80}, {name: y, port: 81}],"
            " endpoints: [{address: 1.2.3.4, port: 9}]}]",
            "single-port service",
            id="port-on-multi-port",
        ),
        pytest.param(
            "services: [{name: a, ports: [{name: x, port: 80}],"
            " endpoints: [{address: 1.2.3.4, ports: {z: 9}}]}]",
            "unknown field(s) ['z']",
            id="unknown-port-name",
        ),
    ],
)
def test_bad_files_say_where(text: str, fragment: str) -> None:
    with pytest.raises(LocalFileError) as caught:
        objects_from_yaml(text, control_plane_ns="meshlet")
    assert fragment in str(caught.value)


def test_a_bad_address_is_a_skipped_object_not_a_crash() -> None:
    objects = objects_from_yaml(
        "services: [{name: a, ports: [{port: 80}], endpoints: [{address: not-an-ip}]}]",
        control_plane_ns="meshlet",
    )
    identity = identity_function(control_plane_ns="meshlet", trust_domain="cluster.local")
    state = ClusterState(cluster_domain="cluster.local", identity_for=identity)
    skipped = [
        bad.reason
        for kind, objs in objects.items()
        for bad in state.apply(Relisted(kind, tuple(objs))).skipped
    ]
    assert "bad_endpoint" in skipped
    assert state.endpoints(ServiceTarget("default", "a", 80)).exists


@pytest.mark.asyncio
async def test_the_source_rereads_on_change_and_keeps_going_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text("services: [{name: a, ports: [{port: 80}]}]")
    source = LocalFileSource(path, control_plane_ns="meshlet", poll_interval=0.01)
    events = source.events()
    first = [await anext(events) for _ in range(4)]
    assert [type(e) for e in first] == [Relisted] * 4
    assert len(first[0].objects) == 1  # type: ignore[union-attr]
    path.write_text("services: [")
    error = await asyncio.wait_for(anext(events), 5)
    assert isinstance(error, SourceError)
    assert error.reason == "bad_local_file"
    path.write_text("services: []\n")
    again = await asyncio.wait_for(anext(events), 5)
    assert isinstance(again, Relisted)
    assert again.objects == ()
    rest = [await anext(events) for _ in range(3)]
    assert [e.kind for e in rest] == ["EndpointSlice", "Pod", "ServiceProfile"]  # type: ignore[union-attr]
    path.unlink()
    gone = await asyncio.wait_for(anext(events), 5)
    assert isinstance(gone, SourceError)
    assert "cannot read" in gone.detail
    await events.aclose()  # type: ignore[attr-defined]
