"""The cluster as the destination service knows it: a pure, in-memory index (no I/O).

Theory of operation: ``ClusterState.apply`` takes one source event, parses the raw objects
(skipping bad ones with a reason), updates the maps and returns the *topics* the change touched:
``("svc", namespace, name)`` for a Service whose endpoints or profile may have changed and
``("ip", address)`` for a ClusterIP or pod IP. Streams subscribe to the topics of their target
and recompute their view (``endpoints``/``profile``) only when one of them is touched, so a
change costs work proportional to the streams that care about it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .authority import IPTarget, ServiceTarget, Target
from .endpoints import EndpointSet, IdentityFor, build_endpoint
from .events import Changed, Relisted
from .model import (
    BadObject,
    Kind,
    ObjectKey,
    Pod,
    Service,
    Slice,
    object_key,
    parse_pod,
    parse_service,
    parse_slice,
)
from .profiles import Profile, default_profile_json, parse_profile, profile_json

__all__ = ["Applied", "ClusterState", "Topic", "topics_for"]

Topic = tuple[str, ...]
_Parsed = Service | Slice | Pod | Profile
_PARSERS: dict[Kind, Callable[[Any], _Parsed | BadObject]] = {
    "Service": parse_service,
    "EndpointSlice": parse_slice,
    "Pod": parse_pod,
    "ServiceProfile": parse_profile,
}


@dataclass(slots=True)
class Applied:
    topics: set[Topic] = field(default_factory=set)
    skipped: list[BadObject] = field(default_factory=list)


def topics_for(target: Target) -> frozenset[Topic]:
    """The topics a stream for ``target`` subscribes to."""
    if isinstance(target, ServiceTarget):
        return frozenset({("svc", target.namespace, target.service)})
    return frozenset({("ip", target.ip)})


class ClusterState:
    """Services, EndpointSlices, Pods and ServiceProfiles, indexed for the streams' lookups."""

    def __init__(self, *, cluster_domain: str, identity_for: IdentityFor) -> None:
        self.cluster_domain = cluster_domain.strip(".")
        self._identity_for = identity_for
        self.services: dict[ObjectKey, Service] = {}
        self.slices: dict[ObjectKey, Slice] = {}
        self.pods: dict[ObjectKey, Pod] = {}
        self.profiles: dict[ObjectKey, Profile] = {}
        self._slices_by_service: dict[ObjectKey, set[str]] = defaultdict(set)
        self._services_by_pod: dict[ObjectKey, set[ObjectKey]] = defaultdict(set)
        self._service_by_ip: dict[str, ObjectKey] = {}
        self._pod_by_ip: dict[str, ObjectKey] = {}

    # -- applying events ------------------------------------------------------------------

    def apply(self, event: Relisted | Changed) -> Applied:
        applied = Applied()
        if isinstance(event, Relisted):
            seen: set[ObjectKey] = set()
            for raw in event.objects:
                key = self._upsert(event.kind, raw, applied)
                if key is not None:
                    seen.add(key)
            for key in set(self._store(event.kind)) - seen:
                self._remove(event.kind, key, applied)
        elif event.type == "DELETED":
            key = object_key(event.object)
            if key is None:
                bad = BadObject(event.kind, "missing_metadata", "a deletion without a name")
                applied.skipped.append(bad)
            else:
                self._remove(event.kind, key, applied)
        else:
            self._upsert(event.kind, event.object, applied)
        return applied

    def _store(self, kind: Kind) -> dict[ObjectKey, Any]:
        stores: dict[Kind, dict[ObjectKey, Any]] = {
            "Service": self.services,
            "EndpointSlice": self.slices,
            "Pod": self.pods,
            "ServiceProfile": self.profiles,
        }
        return stores[kind]

    def _upsert(self, kind: Kind, raw: Any, applied: Applied) -> ObjectKey | None:
        parsed = _PARSERS[kind](raw)
        if isinstance(parsed, BadObject):
            applied.skipped.append(parsed)
            key = object_key(raw)
            if key is not None:
                # The last good version is no longer true either: forget it.
                self._remove(kind, key, applied)
            return None
        key = parsed.key if isinstance(parsed, Profile) else (parsed.namespace, parsed.name)
        old = self._store(kind).get(key)
        if old == parsed:
            return key
        if old is not None:
            self._remove(kind, key, applied)
        self._add(parsed, applied)
        if isinstance(parsed, Slice) and (parsed.namespace, parsed.service) not in self.services:
            # Kept (the Service may arrive later: watches are not ordered), but worth a line.
            detail = f"its Service {parsed.service!r} does not exist (yet)"
            applied.skipped.append(BadObject(kind, "unknown_service", detail, *key))
        return key

    def _service_topics(self, key: ObjectKey, applied: Applied) -> None:
        applied.topics.add(("svc", *key))
        service = self.services.get(key)
        if service is not None:
            applied.topics.update(("ip", ip) for ip in service.cluster_ips)

    def _add(self, parsed: _Parsed, applied: Applied) -> None:
        if isinstance(parsed, Service):
            key = (parsed.namespace, parsed.name)
            self.services[key] = parsed
            for ip in parsed.cluster_ips:
                self._service_by_ip[ip] = key
            self._service_topics(key, applied)
        elif isinstance(parsed, Slice):
            service_key = (parsed.namespace, parsed.service)
            self.slices[(parsed.namespace, parsed.name)] = parsed
            self._slices_by_service[service_key].add(parsed.name)
            for endpoint in parsed.endpoints:
                if endpoint.pod is not None:
                    self._services_by_pod[(parsed.namespace, endpoint.pod)].add(service_key)
            self._service_topics(service_key, applied)
        elif isinstance(parsed, Pod):
            key = (parsed.namespace, parsed.name)
            self.pods[key] = parsed
            for ip in parsed.ips:
                self._pod_by_ip[ip] = key
                applied.topics.add(("ip", ip))
            for service_key in self._services_by_pod.get(key, ()):
                self._service_topics(service_key, applied)
        else:
            self.profiles[parsed.key] = parsed
            profiled = self._service_of_profile(parsed.key)
            if profiled is not None:
                self._service_topics(profiled, applied)

    def _remove(self, kind: Kind, key: ObjectKey, applied: Applied) -> None:
        old = self._store(kind).pop(key, None)
        if old is None:
            return
        if isinstance(old, Service):
            applied.topics.add(("svc", *key))
            applied.topics.update(("ip", ip) for ip in old.cluster_ips)
            for ip in old.cluster_ips:
                if self._service_by_ip.get(ip) == key:
                    del self._service_by_ip[ip]
        elif isinstance(old, Slice):
            service_key = (old.namespace, old.service)
            names = self._slices_by_service[service_key]
            names.discard(old.name)
            if not names:
                del self._slices_by_service[service_key]
            self._reindex_pods(old, service_key)
            self._service_topics(service_key, applied)
        elif isinstance(old, Pod):
            for ip in old.ips:
                if self._pod_by_ip.get(ip) == key:
                    del self._pod_by_ip[ip]
                applied.topics.add(("ip", ip))
            for service_key in self._services_by_pod.get(key, ()):
                self._service_topics(service_key, applied)
        else:
            profiled = self._service_of_profile(key)
            if profiled is not None:
                self._service_topics(profiled, applied)

    def _reindex_pods(self, removed: Slice, service_key: ObjectKey) -> None:
        still = {
            endpoint.pod
            for name in self._slices_by_service.get(service_key, ())
            for endpoint in self.slices[(removed.namespace, name)].endpoints
        }
        for endpoint in removed.endpoints:
            if endpoint.pod is None or endpoint.pod in still:
                continue
            pod_key = (removed.namespace, endpoint.pod)
            services = self._services_by_pod.get(pod_key)
            if services is not None:
                services.discard(service_key)
                if not services:
                    del self._services_by_pod[pod_key]

    def _service_of_profile(self, key: ObjectKey) -> ObjectKey | None:
        namespace, name = key
        suffix = f".{namespace}.svc.{self.cluster_domain}"
        if not name.endswith(suffix):
            return None
        service = name.removesuffix(suffix)
        return (namespace, service) if service and "." not in service else None

    # -- lookups ----------------------------------------------------------------------------

    def service_for(self, target: Target) -> ServiceTarget | None:
        """The Service port ``target`` resolves to (a ClusterIP does), else None."""
        if isinstance(target, ServiceTarget):
            return target
        key = self._service_by_ip.get(target.ip)
        if key is None:
            return None
        return ServiceTarget(namespace=key[0], service=key[1], port=target.port)

    def endpoints(self, target: Target) -> EndpointSet:
        """The current endpoints of ``target`` (what a new stream's snapshot says)."""
        service_target = self.service_for(target)
        if service_target is not None:
            return self._service_endpoints(service_target)
        assert isinstance(target, IPTarget)
        pod_key = self._pod_by_ip.get(target.ip)
        if pod_key is None:
            return EndpointSet(exists=False, endpoints={})
        pod = self.pods[pod_key]
        endpoint = build_endpoint(target.ip, target.port, pod, None, self._identity_for)
        return EndpointSet(exists=True, endpoints={endpoint.key: endpoint})

    def _service_endpoints(self, target: ServiceTarget) -> EndpointSet:
        key = (target.namespace, target.service)
        service = self.services.get(key)
        if service is None:
            return EndpointSet(exists=False, endpoints={})
        port = next((p for p in service.ports if p.port == target.port), None)
        if port is None or service.external_name:
            return EndpointSet(exists=True, endpoints={})
        found = {}
        # Sorted, so that which duplicate wins does not depend on arrival order.
        for name in sorted(self._slices_by_service.get(key, ())):
            piece = self.slices[(target.namespace, name)]
            number = dict(piece.ports).get(port.name)
            if number is None:
                continue
            for item in piece.endpoints:
                if not item.ready or (target.hostname and item.hostname != target.hostname):
                    continue
                pod = self.pods.get((target.namespace, item.pod)) if item.pod else None
                for address in item.addresses:
                    if (address, number) in found:
                        continue  # the same address in two slices: one endpoint
                    endpoint = build_endpoint(address, number, pod, service, self._identity_for)
                    found[endpoint.key] = endpoint
        return EndpointSet(exists=True, endpoints=found)

    def profile(self, target: Target) -> dict[str, Any]:
        """The profile a stream for ``target`` sends (the default when there is none)."""
        service_target = self.service_for(target)
        if service_target is None:
            assert isinstance(target, IPTarget)
            return {**default_profile_json(f"{target.ip}:{target.port}"), "exists": False}
        fqdn = f"{service_target.service}.{service_target.namespace}.svc.{self.cluster_domain}"
        found = self.profiles.get((service_target.namespace, fqdn))
        if found is None:
            return {**default_profile_json(fqdn), "exists": False}
        return {**profile_json(found, fqdn), "exists": True}

    def counts(self) -> dict[str, int]:
        return {
            "services": len(self.services),
            "endpointslices": len(self.slices),
            "pods": len(self.pods),
            "serviceprofiles": len(self.profiles),
        }
