"""The proxy-side client's sans-IO half: NDJSON splitting and folding lines into views."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.discovery.settings import DiscoverySettings, DiscoverySettingsError
from proxy.discovery.state import (
    EndpointTracker,
    LineSplitter,
    ProfileTracker,
    ServerProtocolError,
    parse_line,
)


def ep(address: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {
        "address": address,
        "port": port,
        "weight": 10000,
        "identity": None,
        "labels": {},
        **extra,
    }


def test_lines_are_cut_across_reads() -> None:
    splitter = LineSplitter(max_bytes=100)
    assert splitter.feed(b'{"type":"keep') == []
    assert splitter.feed(b'alive"}\n{"a"') == [b'{"type":"keepalive"}']
    assert splitter.feed(b":1}\n\n") == [b'{"a":1}']


def test_an_endless_line_is_refused() -> None:
    splitter = LineSplitter(max_bytes=10)
    with pytest.raises(ServerProtocolError, match="longer than 10"):
        splitter.feed(b"x" * 11)


@pytest.mark.parametrize("line", [b"nope", b"[1]", b'{"no":"type"}', b"\xff\xfe"])
def test_garbage_lines_are_the_servers_fault(line: bytes) -> None:
    with pytest.raises(ServerProtocolError):
        parse_line(line)


def test_snapshot_add_remove_and_versions() -> None:
    tracker = EndpointTracker()
    assert not tracker.current.resolved
    assert tracker.apply({"type": "snapshot", "exists": True, "endpoints": [ep("10.0.0.1")]})
    first = tracker.current
    assert first.resolved
    assert first.exists
    assert list(first.endpoints) == [("10.0.0.1", 8080)]
    assert tracker.apply(
        {"type": "add", "endpoints": [ep("10.0.0.2"), ep("10.0.0.1", identity="x")]}
    )
    assert tracker.current.endpoints[("10.0.0.1", 8080)].identity == "x"
    assert tracker.apply({"type": "remove", "endpoints": [{"address": "10.0.0.1", "port": 8080}]})
    assert list(tracker.current.endpoints) == [("10.0.0.2", 8080)]
    assert not tracker.apply({"type": "keepalive"})
    assert not tracker.apply({"type": "something-new"})
    assert tracker.current.version == first.version + 2
    # Old snapshots are immutable values: holding one is safe.
    assert list(first.endpoints) == [("10.0.0.1", 8080)]
    with pytest.raises(TypeError):
        first.endpoints[("x", 1)] = first.endpoints[("10.0.0.1", 8080)]  # type: ignore[index]


def test_a_snapshot_replaces_everything() -> None:
    tracker = EndpointTracker()
    tracker.apply({"type": "snapshot", "exists": True, "endpoints": [ep("10.0.0.1")]})
    tracker.apply({"type": "snapshot", "exists": False, "endpoints": []})
    assert not tracker.current.exists
    assert dict(tracker.current.endpoints) == {}


def test_disconnection_keeps_the_endpoints() -> None:
    tracker = EndpointTracker()
    tracker.apply({"type": "snapshot", "exists": True, "endpoints": [ep("10.0.0.1")]})
    assert tracker.set_connection(connected=False, error="OSError: refused")
    assert not tracker.set_connection(connected=False, error="OSError: refused")
    assert list(tracker.current.endpoints) == [("10.0.0.1", 8080)]
    assert tracker.current.error == "OSError: refused"


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"type": "add", "endpoints": [ep("10.0.0.1")]}, id="add-before-snapshot"),
        pytest.param({"type": "snapshot", "endpoints": []}, id="snapshot-without-exists"),
        pytest.param({"type": "snapshot", "exists": True}, id="snapshot-without-list"),
        pytest.param(
            {"type": "snapshot", "exists": True, "endpoints": [{"port": 1}]}, id="no-address"
        ),
        pytest.param(
            {"type": "snapshot", "exists": True, "endpoints": [ep("a", 70000)]}, id="bad-port"
        ),
        pytest.param({"type": "snapshot", "exists": True, "endpoints": ["x"]}, id="not-an-object"),
    ],
)
def test_malformed_updates_are_refused(message: dict[str, Any]) -> None:
    with pytest.raises(ServerProtocolError):
        EndpointTracker().apply(message)


def test_profiles_replace_each_other() -> None:
    tracker = ProfileTracker()
    assert tracker.apply({"type": "profile", "exists": False, "routes": [], "retry_budget": {}})
    assert tracker.current.profile is not None
    assert tracker.current.profile["exists"] is False
    assert not tracker.apply({"type": "keepalive"})
    with pytest.raises(ServerProtocolError):
        tracker.apply({"type": "profile"})


def test_settings_from_the_proxy_environment() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    settings = DiscoverySettings.from_environ({"MESHLET_PROXY_IDENTITY_TRUST_ANCHORS": pem})
    assert (settings.host, settings.port) == ("meshlet-destination.meshlet.svc.cluster.local", 8086)
    assert (
        settings.server_name
        == "meshlet-destination.meshlet.serviceaccount.identity.meshlet.cluster.local"
    )
    custom = DiscoverySettings.from_environ(
        {
            "MESHLET_PROXY_IDENTITY_TRUST_ANCHORS": pem,
            "MESHLET_PROXY_DESTINATION_SVC_ADDR": "127.0.0.1:9999",
            "MESHLET_PROXY_DESTINATION_SVC_NAME": "dst.example",
        }
    )
    assert (custom.host, custom.port, custom.server_name) == ("127.0.0.1", 9999, "dst.example")
    with pytest.raises(DiscoverySettingsError, match="TRUST_ANCHORS"):
        DiscoverySettings.from_environ({})
    with pytest.raises(DiscoverySettingsError, match="SVC_ADDR"):
        DiscoverySettings.from_environ(
            {
                "MESHLET_PROXY_IDENTITY_TRUST_ANCHORS": pem,
                "MESHLET_PROXY_DESTINATION_SVC_ADDR": "x:99999",
            }
        )
