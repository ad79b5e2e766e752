"""Endpoints as proxies see them, and the update lines that move a stream from one set to the next.

Wire format (one JSON object per line, see docs/destination.md):

* ``{"type": "snapshot", "exists": bool, "endpoints": [endpoint, ...]}`` - the whole set; sent
  first, and again whenever the target starts or stops existing.
* ``{"type": "add", "endpoints": [endpoint, ...]}`` - new endpoints, or new metadata for an
  address:port already known (an add replaces the endpoint with the same address and port).
* ``{"type": "remove", "endpoints": [{"address": ..., "port": ...}, ...]}``.

An endpoint is ``{"address", "port", "weight", "identity", "protocol_hint", "labels"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from meshlet.names import PROXY_INBOUND_PORT, workload_identity

from .model import Pod, Service

__all__ = [
    "DEFAULT_WEIGHT",
    "Endpoint",
    "EndpointSet",
    "IdentityFor",
    "build_endpoint",
    "diff_lines",
    "identity_function",
    "snapshot_line",
]

DEFAULT_WEIGHT: Final = 10000  # Linkerd's default weight
IdentityFor = Callable[[Pod], str | None]  # the pod's TLS identity when it is meshed by us


def identity_function(*, control_plane_ns: str, trust_domain: str) -> IdentityFor:
    """Pods meshed by *this* control plane get an identity; others' identities are not ours."""

    def identity_for(pod: Pod) -> str | None:
        if pod.control_plane_ns != control_plane_ns:
            return None
        return workload_identity(
            pod.serviceaccount,
            pod.namespace,
            control_plane_ns=control_plane_ns,
            trust_domain=trust_domain,
        )

    return identity_for


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    weight: int
    identity: str | None
    protocol_hint: str | None  # "h2" (meshed: the proxies speak HTTP/2), "opaque", or None
    labels: tuple[tuple[str, str], ...]

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "address": self.address,
            "port": self.port,
            "weight": self.weight,
            "identity": self.identity,
            "protocol_hint": self.protocol_hint,
            "labels": dict(self.labels),
        }
        if self.protocol_hint == "opaque":
            out["opaque_transport_port"] = PROXY_INBOUND_PORT
        return out


@dataclass(frozen=True, slots=True)
class EndpointSet:
    exists: bool
    endpoints: dict[tuple[str, int], Endpoint]


def build_endpoint(
    address: str, port: int, pod: Pod | None, service: Service | None, identity_for: IdentityFor
) -> Endpoint:
    labels: dict[str, str] = {}
    if service is not None:
        labels["namespace"] = service.namespace
        labels["service"] = service.name
    identity = hint = None
    if pod is not None:
        labels["namespace"] = pod.namespace
        labels["pod"] = pod.name
        labels["serviceaccount"] = pod.serviceaccount
        if pod.owner is not None:
            labels[pod.owner[0]] = pod.owner[1]
        if pod.control_plane_ns is not None:
            labels["control_plane_ns"] = pod.control_plane_ns
            identity = identity_for(pod)
            hint = "opaque" if port in pod.opaque_ports else "h2"
    return Endpoint(address, port, DEFAULT_WEIGHT, identity, hint, tuple(sorted(labels.items())))


def snapshot_line(current: EndpointSet) -> dict[str, Any]:
    endpoints = [current.endpoints[key].as_json() for key in sorted(current.endpoints)]
    return {"type": "snapshot", "exists": current.exists, "endpoints": endpoints}


def diff_lines(previous: EndpointSet | None, current: EndpointSet) -> list[dict[str, Any]]:
    """The lines that take a client from ``previous`` (None: nothing sent yet) to ``current``."""
    if previous is None or previous.exists != current.exists:
        return [snapshot_line(current)]
    old, new = previous.endpoints, current.endpoints
    removed = sorted(key for key in old if key not in new)
    changed = sorted(key for key, value in new.items() if old.get(key) != value)
    lines: list[dict[str, Any]] = []
    if removed:
        gone = [{"address": address, "port": port} for address, port in removed]
        lines.append({"type": "remove", "endpoints": gone})
    if changed:
        lines.append({"type": "add", "endpoints": [new[key].as_json() for key in changed]})
    return lines
