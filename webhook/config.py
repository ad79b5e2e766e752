"""The proxy's configuration for one pod: defaults, then ``config.meshlet.io/*`` overrides.

Overrides come from the namespace's annotations and the pod's (the pod wins). A value that does
not parse never blocks the pod: the default is kept and a warning names the annotation and the
bad value; the webhook returns those warnings in the AdmissionResponse, so ``kubectl apply``
prints them to whoever created the workload.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from meshlet import __version__
from meshlet.names import (
    CONFIG_ANNOTATION_PREFIX,
    DEFAULT_INBOUND_POLICY,
    DEFAULT_OPAQUE_PORTS,
    INBOUND_POLICIES,
    PROXY_UID,
)

__all__ = [
    "LOG_LEVELS",
    "OVERRIDE_NAMES",
    "ConfigValueError",
    "ProxyConfig",
    "parse_identities",
    "parse_image",
    "parse_inbound_policy",
    "parse_log_level",
    "parse_ports",
    "parse_quantity",
    "parse_uid",
    "parse_version",
    "resolve_config",
]

LOG_LEVELS = ("trace", "debug", "info", "warn", "error")


class ConfigValueError(ValueError):
    """A setting's value does not parse; the message says what was expected."""


def parse_ports(text: str) -> str:
    """``"80, 8080-8090"`` -> ``"80,8080-8090"``: ports 1-65535 and ``a-b`` ranges, canonical."""
    parts: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        low, dash, high = item.partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ConfigValueError(f"{item!r} is not a port or a port range a-b") from None
        if not (1 <= first <= 65535 and 1 <= last <= 65535) or first > last:
            raise ConfigValueError(f"{item!r} is outside 1-65535 or an empty range")
        parts.append(f"{first}-{last}" if dash and first != last else str(first))
    return ",".join(parts)


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{f"{s}i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
}


def parse_quantity(text: str) -> str:
    """A non-negative Kubernetes resource quantity (``100m``, ``0.5``, ``64Mi``), unchanged."""
    if not _QUANTITY.match(text):
        raise ConfigValueError(f"{text!r} is not a Kubernetes quantity such as 100m or 64Mi")
    return text


def quantity_value(text: str) -> Decimal:
    match = _QUANTITY.match(text)
    if match is None:
        raise ConfigValueError(f"{text!r} is not a Kubernetes quantity")
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ConfigValueError(f"{text!r} is not a Kubernetes quantity") from None


_IMAGE = re.compile(r"^[a-z0-9]+(?:[._/:-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def parse_image(text: str) -> str:
    """An image repository without tag or digest (``ghcr.io/meshlet/proxy``)."""
    if len(text) > 255 or not _IMAGE.match(text):
        raise ConfigValueError(f"{text!r} is not an image repository such as registry/name")
    return text


def parse_version(text: str) -> str:
    """An image tag (``v0.1.0``)."""
    if not _TAG.match(text):
        raise ConfigValueError(f"{text!r} is not an image tag")
    return text


def parse_log_level(text: str) -> str:
    if text not in LOG_LEVELS:
        raise ConfigValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text


def parse_inbound_policy(text: str) -> str:
    """The proxy's default inbound policy (Linkerd's values, docs/mesh-tls.md)."""
    if text not in INBOUND_POLICIES:
        raise ConfigValueError(f"{text!r} is not one of {', '.join(INBOUND_POLICIES)}")
    return text


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_IDENTITY = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def parse_identities(text: str) -> str:
    """Comma-separated mesh identities (DNS names) -> the canonical list (lower case, sorted)."""
    names = sorted({item.strip().lower() for item in text.split(",") if item.strip()})
    for name in names:
        if len(name) > 253 or not _IDENTITY.match(name):
            raise ConfigValueError(f"{name!r} is not a mesh identity (a DNS name)")
    return ",".join(names)


def parse_uid(text: str) -> int:
    """A non-root user id: the proxy must not be root, and iptables exempts exactly this uid."""
    try:
        uid = int(text)
    except ValueError:
        raise ConfigValueError(f"{text!r} is not a user id") from None
    if not 1 <= uid <= 2**31 - 1:
        raise ConfigValueError(f"{text!r} is not a non-root user id (1-2147483647)")
    return uid


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """What varies per pod in the injected containers. Defaults come from WebhookSettings."""

    # One image holds every meshlet component (image/build.sh tags it localhost/meshlet); the
    # tag is meshlet's version, which `meshlet check` compares proxies against.
    image: str = "localhost/meshlet"
    version: str = __version__
    log_level: str = "info"
    cpu_request: str | None = "100m"
    cpu_limit: str | None = None
    memory_request: str | None = "20Mi"
    memory_limit: str | None = "250Mi"
    skip_inbound_ports: str = ""
    skip_outbound_ports: str = ""
    opaque_ports: str = ",".join(map(str, DEFAULT_OPAQUE_PORTS))
    proxy_uid: int = PROXY_UID
    default_inbound_policy: str = DEFAULT_INBOUND_POLICY
    tap_authorized_identities: str = ""


# annotation setting name -> (ProxyConfig field, parser)
_Parser = Callable[[str], Any]
_OVERRIDES: dict[str, tuple[str, _Parser]] = {
    "proxy-image": ("image", parse_image),
    "proxy-version": ("version", parse_version),
    "proxy-log-level": ("log_level", parse_log_level),
    "proxy-cpu-request": ("cpu_request", parse_quantity),
    "proxy-cpu-limit": ("cpu_limit", parse_quantity),
    "proxy-memory-request": ("memory_request", parse_quantity),
    "proxy-memory-limit": ("memory_limit", parse_quantity),
    "skip-inbound-ports": ("skip_inbound_ports", parse_ports),
    "skip-outbound-ports": ("skip_outbound_ports", parse_ports),
    "opaque-ports": ("opaque_ports", parse_ports),
    "proxy-uid": ("proxy_uid", parse_uid),
    "default-inbound-policy": ("default_inbound_policy", parse_inbound_policy),
    "tap-authorized-identities": ("tap_authorized_identities", parse_identities),
}
OVERRIDE_NAMES = tuple(_OVERRIDES)
assert {field for field, _ in _OVERRIDES.values()} == {f.name for f in fields(ProxyConfig)}


def _check_pair(
    config: ProxyConfig, defaults: ProxyConfig, request: str, limit: str, warnings: list[str]
) -> ProxyConfig:
    low, high = getattr(config, request), getattr(config, limit)
    if low is None or high is None or quantity_value(low) <= quantity_value(high):
        return config
    warnings.append(
        f"{request.replace('_', '-')} {low} exceeds {limit.replace('_', '-')} {high}: "
        f"using the defaults {getattr(defaults, request)} / {getattr(defaults, limit)}"
    )
    return replace(config, **{request: getattr(defaults, request), limit: getattr(defaults, limit)})


def resolve_config(
    defaults: ProxyConfig,
    namespace_annotations: Mapping[str, Any],
    pod_annotations: Mapping[str, Any],
) -> tuple[ProxyConfig, list[str], dict[str, str]]:
    """Apply overrides; return the config, warnings, and the namespace's overrides the pod lacks.

    The last item is copied onto the pod as annotations (as Linkerd does), so the pod records
    which settings it runs with even when they came from its namespace.
    """
    changes: dict[str, Any] = {}
    warnings: list[str] = []
    inherited: dict[str, str] = {}
    for name, (field, parse) in _OVERRIDES.items():
        key = CONFIG_ANNOTATION_PREFIX + name
        if key in pod_annotations:
            value, where = pod_annotations[key], "pod"
        elif key in namespace_annotations:
            value, where = namespace_annotations[key], "namespace"
        else:
            continue
        if not isinstance(value, str):
            warnings.append(f"{where} annotation {key} is not a string: using the default")
            continue
        try:
            changes[field] = parse(value.strip())
        except ConfigValueError as error:
            default = getattr(defaults, field)
            warnings.append(
                f"{where} annotation {key}={value!r} is invalid ({error}): "
                f"using the default {default if default not in (None, '') else '(none)'}"
            )
            continue
        if where == "namespace":
            inherited[key] = value
    config = replace(defaults, **changes)
    config = _check_pair(config, defaults, "cpu_request", "cpu_limit", warnings)
    config = _check_pair(config, defaults, "memory_request", "memory_limit", warnings)
    return config, warnings, inherited
