"""Kubernetes objects as the destination service needs them, parsed from API dictionaries.

Each ``parse_*`` function takes the raw object (camelCase, as the API server or the local YAML
file gives it) and returns either a small frozen value or a :class:`BadObject` naming what is
wrong. They never raise: one malformed object from the API must not stop the watch loop.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard

__all__ = [
    "CONTROL_PLANE_NS_LABEL",
    "OWNER_LABEL_PREFIX",
    "SERVICE_NAME_LABEL",
    "BadObject",
    "Kind",
    "ObjectKey",
    "Pod",
    "Service",
    "ServicePort",
    "Slice",
    "SliceEndpoint",
    "object_key",
    "parse_pod",
    "parse_service",
    "parse_slice",
    "parse_port_list",
]

Kind = Literal["Service", "EndpointSlice", "Pod", "ServiceProfile"]
ObjectKey = tuple[str, str]  # (namespace, name)

CONTROL_PLANE_NS_LABEL: Final = "meshlet.io/control-plane-ns"
OWNER_LABEL_PREFIX: Final = "meshlet.io/proxy-"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
OPAQUE_PORTS_ANNOTATION: Final = "config.meshlet.io/opaque-ports"
_MAX_PORT_RANGE: Final = 65535


@dataclass(frozen=True, slots=True)
class BadObject:
    """An object that was skipped: ``reason`` is a slug (a metric label), ``detail`` a sentence."""

    kind: Kind
    reason: str
    detail: str
    namespace: str = ""
    name: str = ""

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.name else "(unnamed)"
        return f"skipped {self.kind} {where}: {self.detail}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    cluster_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    external_name: bool = False


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    hostname: str | None
    pod: str | None  # targetRef name when it is a Pod in the slice's namespace


@dataclass(frozen=True, slots=True)
class Slice:
    namespace: str
    name: str
    service: str
    ports: tuple[tuple[str, int], ...]  # (port name, number); "" for an unnamed port
    endpoints: tuple[SliceEndpoint, ...]


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...]
    serviceaccount: str
    control_plane_ns: str | None  # the label value when the pod is meshed
    owner: tuple[str, str] | None  # (kind, name), e.g. ("deployment", "web")
    opaque_ports: frozenset[int]


def object_key(raw: Any) -> ObjectKey | None:
    """``(namespace, name)`` of a raw object, or None when its metadata is unusable."""
    if not isinstance(raw, dict):
        return None
    meta = raw.get("metadata")
    if not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        return None
    return (namespace, name)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _string_map(value: Any) -> dict[str, str]:
    return {k: v for k, v in _dict(value).items() if isinstance(k, str) and isinstance(v, str)}


def _is_ip(text: Any) -> TypeGuard[str]:
    if not isinstance(text, str):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _port_number(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return None
    return value


def _missing(kind: Kind, what: str) -> BadObject:
    return BadObject(kind, "missing_metadata", f"{what} has no metadata.name/namespace")


def parse_service(raw: Any) -> Service | BadObject:
    key = object_key(raw)
    if key is None:
        return _missing("Service", "a Service")
    namespace, name = key
    spec = raw.get("spec")
    if not isinstance(spec, dict):
        return BadObject("Service", "missing_spec", "it has no spec", namespace, name)
    ports: list[ServicePort] = []
    for entry in _list(spec.get("ports")):
        number = _port_number(_dict(entry).get("port"))
        if number is None:
            return BadObject("Service", "bad_port", f"port entry {entry!r} has no valid port", *key)
        port_name = _dict(entry).get("name") or ""
        ports.append(ServicePort(name=str(port_name), port=number))
    ips = [ip for ip in _list(spec.get("clusterIPs")) if _is_ip(ip)]
    if not ips and _is_ip(spec.get("clusterIP")):
        ips = [spec["clusterIP"]]
    return Service(
        namespace=namespace,
        name=name,
        cluster_ips=tuple(str(ipaddress.ip_address(ip)) for ip in ips),
        ports=tuple(ports),
        external_name=spec.get("type") == "ExternalName",
    )


def _parse_slice_endpoint(raw: Any, namespace: str) -> SliceEndpoint | str:
    entry = _dict(raw)
    addresses = _list(entry.get("addresses"))
    if not addresses or not all(_is_ip(a) for a in addresses):
        return f"endpoint {raw!r} has no valid addresses"
    conditions = _dict(entry.get("conditions"))
    # discovery.k8s.io/v1: a nil "ready" means ready; a terminating endpoint is never ready.
    ready = conditions.get("ready") is not False
    hostname = entry.get("hostname")
    ref = _dict(entry.get("targetRef"))
    pod = None
    same_namespace = ref.get("namespace", namespace) == namespace
    if ref.get("kind") == "Pod" and isinstance(ref.get("name"), str) and same_namespace:
        pod = ref["name"]
    return SliceEndpoint(
        addresses=tuple(str(ipaddress.ip_address(a)) for a in addresses),
        ready=ready,
        hostname=hostname if isinstance(hostname, str) and hostname else None,
        pod=pod,
    )


def parse_slice(raw: Any) -> Slice | BadObject:
    key = object_key(raw)
    if key is None:
        return _missing("EndpointSlice", "an EndpointSlice")
    namespace, name = key
    labels = _string_map(_dict(raw.get("metadata")).get("labels"))
    service = labels.get(SERVICE_NAME_LABEL)
    if not service:
        detail = f"it has no {SERVICE_NAME_LABEL} label"
        return BadObject("EndpointSlice", "no_service_label", detail, *key)
    if raw.get("addressType") not in {"IPv4", "IPv6"}:
        detail = f"addressType {raw.get('addressType')!r} is not IPv4 or IPv6"
        return BadObject("EndpointSlice", "unsupported_address_type", detail, *key)
    ports: list[tuple[str, int]] = []
    for entry in _list(raw.get("ports")):
        number = _port_number(_dict(entry).get("port"))
        if number is None:
            detail = f"port entry {entry!r} has no valid port"
            return BadObject("EndpointSlice", "bad_port", detail, *key)
        ports.append((str(_dict(entry).get("name") or ""), number))
    endpoints: list[SliceEndpoint] = []
    for entry in _list(raw.get("endpoints")):
        parsed = _parse_slice_endpoint(entry, namespace)
        if isinstance(parsed, str):
            return BadObject("EndpointSlice", "bad_endpoint", parsed, *key)
        endpoints.append(parsed)
    return Slice(namespace, name, service, tuple(ports), tuple(endpoints))


def parse_port_list(text: str) -> frozenset[int] | None:
    """``"25,3306,8000-8010"`` as a set of ports, or None when malformed."""
    ports: set[int] = set()
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        low, sep, high = item.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            return None
        first, last = int(low), int(high) if sep else int(low)
        if not 1 <= first <= last <= _MAX_PORT_RANGE:
            return None
        ports.update(range(first, last + 1))
    return frozenset(ports)


def _owner(meta: dict[str, Any], labels: dict[str, str]) -> tuple[str, str] | None:
    for label, value in sorted(labels.items()):
        if label.startswith(OWNER_LABEL_PREFIX) and value:
            return (label.removeprefix(OWNER_LABEL_PREFIX), value)
    for entry in _list(meta.get("ownerReferences")):
        ref = _dict(entry)
        kind, name = ref.get("kind"), ref.get("name")
        if not ref.get("controller") or not isinstance(kind, str) or not isinstance(name, str):
            continue
        template_hash = labels.get("pod-template-hash")
        if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
            # Linkerd's convention: a ReplicaSet made by a Deployment is reported as it.
            return ("deployment", name.removesuffix(f"-{template_hash}"))
        return (kind.lower(), name)
    return None


def parse_pod(raw: Any) -> Pod | BadObject:
    key = object_key(raw)
    if key is None:
        return _missing("Pod", "a Pod")
    meta = _dict(raw.get("metadata"))
    labels = _string_map(meta.get("labels"))
    annotations = _string_map(meta.get("annotations"))
    spec, status = _dict(raw.get("spec")), _dict(raw.get("status"))
    listed = [_dict(entry).get("ip") for entry in _list(status.get("podIPs"))]
    ips: list[str] = [ip for ip in listed if _is_ip(ip)]
    if not ips and _is_ip(status.get("podIP")):
        ips = [status["podIP"]]
    if status.get("phase") in {"Succeeded", "Failed"} or spec.get("hostNetwork") is True:
        # A finished pod's IP is reused by others; a hostNetwork pod's IP is its node's.
        ips = []
    opaque = parse_port_list(annotations.get(OPAQUE_PORTS_ANNOTATION, ""))
    if opaque is None:
        detail = f"annotation {OPAQUE_PORTS_ANNOTATION} is not a port list"
        return BadObject("Pod", "bad_opaque_ports", detail, *key)
    serviceaccount = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return Pod(
        namespace=key[0],
        name=key[1],
        ips=tuple(str(ipaddress.ip_address(ip)) for ip in ips),
        serviceaccount=str(serviceaccount),
        control_plane_ns=labels.get(CONTROL_PLANE_NS_LABEL) or None,
        owner=_owner(meta, labels),
        opaque_ports=opaque,
    )
