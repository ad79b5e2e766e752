"""Raw Kubernetes objects (as the API server sends them) for the destination tests."""

from __future__ import annotations

from typing import Any


def service(
    name: str,
    namespace: str = "shop",
    *,
    cluster_ip: str | None = "10.96.0.10",
    ports: list[tuple[str, int]] | None = None,
    rv: str = "1",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in (ports or [("http", 80)])]
    }
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
        spec["clusterIPs"] = [cluster_ip]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
        "spec": spec,
    }


def endpoint(
    address: str,
    pod: str | None = None,
    *,
    ready: bool | None = True,
    hostname: str | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"addresses": [address], "conditions": {}}
    if ready is not None:
        entry["conditions"]["ready"] = ready
    if pod is not None:
        entry["targetRef"] = {"kind": "Pod", "name": pod}
    if hostname is not None:
        entry["hostname"] = hostname
    return entry


def endpoint_slice(
    name: str,
    service_name: str,
    endpoints: list[dict[str, Any]],
    *,
    namespace: str = "shop",
    ports: list[tuple[str, int]] | None = None,
    rv: str = "1",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
            "resourceVersion": rv,
        },
        "addressType": "IPv4",
        "ports": [
            {"name": n, "port": p, "protocol": "TCP"} for n, p in (ports or [("http", 8080)])
        ],
        "endpoints": endpoints,
    }


def pod(
    name: str,
    ip: str,
    *,
    namespace: str = "shop",
    serviceaccount: str = "web",
    meshed: bool = True,
    owner: tuple[str, str] | None = ("deployment", "web"),
    annotations: dict[str, str] | None = None,
    rv: str = "1",
) -> dict[str, Any]:
    labels: dict[str, str] = {}
    if meshed:
        labels["meshlet.io/control-plane-ns"] = "meshlet"
    if owner is not None:
        labels[f"meshlet.io/proxy-{owner[0]}"] = owner[1]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations or {},
            "resourceVersion": rv,
        },
        "spec": {"serviceAccountName": serviceaccount},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def service_profile(name: str, namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "meshlet.io/v1alpha1",
        "kind": "ServiceProfile",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": spec,
    }
