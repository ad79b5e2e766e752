"""Local mode: services, endpoints and profiles from a YAML file, watched for changes.

The file (format in docs/destination.md, example in ``destination/example-local.yaml``) is turned
into the same raw Service / EndpointSlice / Pod / ServiceProfile objects the API server would
send, so local mode goes through exactly the parsing and indexing that Kubernetes mode does.
The file is checked every ``poll_interval`` seconds (mtime, size, inode: an editor's rename or a
ConfigMap's symlink swap counts); a file that does not parse is reported and the last good
content keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import yaml

from .events import KINDS, Relisted, SourceError, SourceEvent
from .model import CONTROL_PLANE_NS_LABEL, OWNER_LABEL_PREFIX, SERVICE_NAME_LABEL, Kind

__all__ = ["LocalFileError", "LocalFileSource", "objects_from_yaml"]

MAX_FILE_BYTES: Final = 16 * 1024 * 1024
_SERVICE_FIELDS: Final = {"name", "namespace", "clusterIP", "ports", "endpoints"}
_PORT_FIELDS: Final = {"name", "port", "targetPort"}
_ENDPOINT_FIELDS: Final = {
    "address",
    "port",
    "ports",
    "pod",
    "hostname",
    "serviceAccount",
    "meshed",
    "owner",
    "ready",
    "opaquePorts",
}
_PROFILE_FIELDS: Final = {"name", "namespace", "routes", "retryBudget"}


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LocalFileError(ValueError):
    """The file cannot be used; the message says where in it and why."""


def _mapping(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LocalFileError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise LocalFileError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise LocalFileError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise LocalFileError(f"{where}: expected a port number 1-65535, got {value!r}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise LocalFileError(f"{where}: expected a list")
    return value


def _endpoint_ports(
    raw: dict[str, Any], where: str, targets: dict[str, int]
) -> tuple[tuple[str, int], ...]:
    ports = dict(targets)
    if "port" in raw:
        if len(targets) != 1:
            raise LocalFileError(f"{where}: 'port' needs a single-port service; use 'ports'")
        ports = {next(iter(targets)): _port(raw["port"], f"{where}.port")}
    for name, number in _mapping(raw.get("ports", {}), f"{where}.ports", set(targets)).items():
        ports[name] = _port(number, f"{where}.ports.{name}")
    return tuple(sorted(ports.items()))


def _pod(
    raw: dict[str, Any], where: str, namespace: str, name: str, control_plane_ns: str
) -> dict[str, Any]:
    labels: dict[str, str] = {}
    if raw.get("meshed", True) is True:
        labels[CONTROL_PLANE_NS_LABEL] = control_plane_ns
    owner = raw.get("owner")
    if owner is not None:
        owner = _mapping(owner, f"{where}.owner", {"kind", "name"})
        kind = _text(owner.get("kind"), f"{where}.owner.kind").lower()
        labels[OWNER_LABEL_PREFIX + kind] = _text(owner.get("name"), f"{where}.owner.name")
    annotations = {}
    if "opaquePorts" in raw:
        annotations["config.meshlet.io/opaque-ports"] = str(raw["opaquePorts"])
    account = _text(raw.get("serviceAccount", "default"), f"{where}.serviceAccount")
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"serviceAccountName": account},
        "status": {"phase": "Running", "podIP": raw["address"]},
    }


def _service(
    raw: Any, where: str, control_plane_ns: str, out: dict[Kind, list[dict[str, Any]]]
) -> None:
    raw = _mapping(raw, where, _SERVICE_FIELDS)
    name = _text(raw.get("name"), f"{where}.name")
    namespace = _text(raw.get("namespace", "default"), f"{where}.namespace")
    ports, targets = [], {}
    for i, item in enumerate(_list(raw.get("ports"), f"{where}.ports")):
        entry = _mapping(item, f"{where}.ports[{i}]", _PORT_FIELDS)
        port_name = str(entry.get("name") or "")
        number = _port(entry.get("port"), f"{where}.ports[{i}].port")
        ports.append({"name": port_name, "port": number, "protocol": "TCP"})
        targets[port_name] = _port(
            entry.get("targetPort", number), f"{where}.ports[{i}].targetPort"
        )
    if not ports:
        raise LocalFileError(f"{where}.ports: a service needs at least one port")
    spec: dict[str, Any] = {"ports": ports}
    if "clusterIP" in raw:
        spec["clusterIP"] = _text(raw["clusterIP"], f"{where}.clusterIP")
    meta = {"name": name, "namespace": namespace}
    out["Service"].append({"metadata": meta, "spec": spec})
    by_ports: dict[tuple[tuple[str, int], ...], list[dict[str, Any]]] = {}
    for i, item in enumerate(_list(raw.get("endpoints"), f"{where}.endpoints")):
        at = f"{where}.endpoints[{i}]"
        entry = _mapping(item, at, _ENDPOINT_FIELDS)
        _text(entry.get("address"), f"{at}.address")
        pod_name = _text(entry.get("pod", f"{name}-{i}"), f"{at}.pod")
        slice_endpoint: dict[str, Any] = {
            "addresses": [entry["address"]],
            "conditions": {"ready": entry.get("ready", True) is True},
            "targetRef": {"kind": "Pod", "name": pod_name, "namespace": namespace},
        }
        if "hostname" in entry:
            slice_endpoint["hostname"] = _text(entry["hostname"], f"{at}.hostname")
        by_ports.setdefault(_endpoint_ports(entry, at, targets), []).append(slice_endpoint)
        out["Pod"].append(_pod(entry, at, namespace, pod_name, control_plane_ns))
    for n, (slice_ports, endpoints) in enumerate(sorted(by_ports.items())):
        out["EndpointSlice"].append(
            {
                "metadata": {
                    "name": f"{name}-{n}",
                    "namespace": namespace,
                    "labels": {SERVICE_NAME_LABEL: name},
                },
                "addressType": "IPv6" if ":" in endpoints[0]["addresses"][0] else "IPv4",
                "ports": [{"name": p, "port": number} for p, number in slice_ports],
                "endpoints": endpoints,
            }
        )


def objects_from_yaml(text: str, *, control_plane_ns: str) -> dict[Kind, list[dict[str, Any]]]:
    """The raw objects a local file describes, by kind; raises ``LocalFileError``."""
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 (a safe loader, C if available)
    except yaml.YAMLError as error:
        raise LocalFileError(f"not valid YAML: {error}".replace("\n", " ")) from None
    if document is None:
        document = {}
    document = _mapping(document, "top level", {"services", "profiles"})
    out: dict[Kind, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for i, raw in enumerate(_list(document.get("services"), "services")):
        _service(raw, f"services[{i}]", control_plane_ns, out)
    for i, item in enumerate(_list(document.get("profiles"), "profiles")):
        where = f"profiles[{i}]"
        raw = _mapping(item, where, _PROFILE_FIELDS)
        meta = {
            "name": _text(raw.get("name"), f"{where}.name"),
            "namespace": _text(raw.get("namespace", "default"), f"{where}.namespace"),
        }
        spec = {key: raw[key] for key in ("routes", "retryBudget") if key in raw}
        out["ServiceProfile"].append({"metadata": meta, "spec": spec})
    return out


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class LocalFileSource:
    """An ``ObjectSource`` reading a YAML file, re-read whenever it changes."""

    def __init__(self, path: Path, *, control_plane_ns: str, poll_interval: float) -> None:
        self.path = path
        self.control_plane_ns = control_plane_ns
        self.poll_interval = poll_interval

    def _load(self) -> dict[Kind, list[dict[str, Any]]]:
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as error:
            raise LocalFileError(f"cannot read it: {error.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise LocalFileError(f"it is larger than {MAX_FILE_BYTES} bytes")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise LocalFileError("it is not UTF-8 text") from None
        return objects_from_yaml(text, control_plane_ns=self.control_plane_ns)

    async def events(self) -> AsyncIterator[SourceEvent]:
        seen: tuple[int, int, int] | bool | None = False  # False: never looked
        while True:
            stamp = _stamp(self.path)
            if stamp != seen:
                seen = stamp
                try:
                    loaded = self._load()
                except LocalFileError as error:
                    yield SourceError("all", "bad_local_file", f"{self.path}: {error}")
                else:
                    for kind in KINDS:
                        yield Relisted(kind, tuple(loaded[kind]))
            await asyncio.sleep(self.poll_interval)
