"""``WebhookSettings``: every knob of ``meshlet-webhook``, loaded once, frozen.

Each setting is an environment variable ``MESHLET_WEBHOOK_<NAME>``; ``meshlet-webhook``'s flags
set the same variables (a flag wins over the environment). Bad values raise
:class:`SettingsError` with a one-line message naming the variable, which ``main`` prints.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshlet.names import DEFAULT_CONTROL_PLANE_NS, DEFAULT_TRUST_DOMAIN, WEBHOOK_PORT
from webhook.config import (
    ConfigValueError,
    ProxyConfig,
    parse_identities,
    parse_image,
    parse_inbound_policy,
    parse_log_level,
    parse_ports,
    parse_quantity,
    parse_uid,
    parse_version,
)
from webhook.patch import MeshParams

__all__ = ["ENV_NAMES", "ENV_PREFIX", "SettingsError", "WebhookSettings", "load_settings"]

ENV_PREFIX = "MESHLET_WEBHOOK_"
MAX_TRUST_ANCHORS_BYTES = 1024 * 1024


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line for the operator."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    # Where to listen. 8443: Linkerd's injector port, unprivileged, the Service maps 443 to it.
    listen_host: str = "0.0.0.0"  # noqa: S104 (a pod serves on its pod IP)
    listen_port: int = WEBHOOK_PORT
    # Serving certificate and key (PEM files), reloaded when they change (Secret rotation).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Seconds between checks of the TLS files for changes: cheap (a stat), and a rotated Secret
    # reaches the pod's volume only every ~60 s anyway.
    tls_check_interval: float = 2.0
    # Pods here are never injected; proxies' control-plane addresses live here.
    control_plane_ns: str = DEFAULT_CONTROL_PLANE_NS
    # Suffix of workload identities (same default as Kubernetes' cluster domain and Linkerd).
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # DNS suffix of Services, for the control-plane addresses the proxy dials.
    cluster_domain: str = "cluster.local"
    # The mesh's trust anchors (PEM). Optional only for local runs: without it proxies cannot
    # verify peers, so the injector logs a warning at start.
    trust_anchors_file: Path | None = None
    trust_anchors_pem: str | None = None
    # Proxy defaults; each can be overridden per namespace or pod with config.meshlet.io/*.
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    # Where namespaces and owners come from: "kubernetes" (in-cluster, or kubeconfig_file when
    # set) or the path of a YAML file of Namespace/ReplicaSet/Job objects (no cluster needed).
    cluster: str = "kubernetes"
    kubeconfig_file: Path | None = None
    # The MutatingWebhookConfiguration whose caBundle the webhook keeps equal to the CA of the
    # certificate it serves (needs get/patch on it); empty: leave it to the manifests.
    ca_bundle_config: str = ""
    # Seconds between caBundle checks; a rotated Secret reaches the pod's volume in ~60 s.
    ca_bundle_interval: float = 30.0
    # Largest AdmissionReview accepted, bytes. The API server caps objects at ~1.5 MiB (etcd), a
    # review carries at most two copies plus metadata; 10 MiB leaves room and bounds memory.
    max_body_bytes: int = 10 * 1024 * 1024
    log_level: str = "info"

    @property
    def trust_root_sha256(self) -> str | None:
        if self.trust_anchors_pem is None:
            return None
        return hashlib.sha256(self.trust_anchors_pem.encode()).hexdigest()

    def mesh_params(self, created_by: str) -> MeshParams:
        return MeshParams(
            control_plane_ns=self.control_plane_ns,
            trust_domain=self.trust_domain,
            cluster_domain=self.cluster_domain,
            trust_anchors_pem=self.trust_anchors_pem,
            trust_root_sha256=self.trust_root_sha256,
            created_by=created_by,
        )


def _parse_listen(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


def _read_anchors(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigValueError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_TRUST_ANCHORS_BYTES:
        raise ConfigValueError(f"{path} is larger than {MAX_TRUST_ANCHORS_BYTES} bytes")
    text = data.decode("utf-8", errors="replace")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigValueError(f"{path} holds no PEM certificate")
    return text


def _dns_label(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise ConfigValueError(f"{value!r} is not a DNS label")
    return value


def _byte_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1024:
        raise ConfigValueError(f"{text!r} is not a byte count of at least 1024")
    return int(text)


_Parser = Callable[[str], Any]
# MESHLET_WEBHOOK_<NAME> -> (WebhookSettings field, parser)
_TOP: dict[str, tuple[str, _Parser]] = {
    "LISTEN_ADDR": ("listen", _parse_listen),
    "TLS_CERT_FILE": ("tls_cert_file", Path),
    "TLS_KEY_FILE": ("tls_key_file", Path),
    "TRUST_ANCHORS_FILE": ("trust_anchors_file", Path),
    "KUBECONFIG_FILE": ("kubeconfig_file", Path),
    "CONTROL_PLANE_NS": ("control_plane_ns", _dns_label),
    "TRUST_DOMAIN": ("trust_domain", str),
    "CLUSTER_DOMAIN": ("cluster_domain", str),
    "CLUSTER": ("cluster", str),
    "CA_BUNDLE_CONFIG": ("ca_bundle_config", str),
    "LOG_LEVEL": ("log_level", parse_log_level),
    "MAX_BODY_BYTES": ("max_body_bytes", _byte_count),
}
# MESHLET_WEBHOOK_PROXY_<NAME> -> (ProxyConfig field, parser): the injected proxy's defaults.
_PROXY: dict[str, tuple[str, _Parser]] = {
    "IMAGE": ("image", parse_image),
    "VERSION": ("version", parse_version),
    "LOG_LEVEL": ("log_level", parse_log_level),
    "CPU_REQUEST": ("cpu_request", parse_quantity),
    "CPU_LIMIT": ("cpu_limit", parse_quantity),
    "MEMORY_REQUEST": ("memory_request", parse_quantity),
    "MEMORY_LIMIT": ("memory_limit", parse_quantity),
    "SKIP_INBOUND_PORTS": ("skip_inbound_ports", parse_ports),
    "SKIP_OUTBOUND_PORTS": ("skip_outbound_ports", parse_ports),
    "OPAQUE_PORTS": ("opaque_ports", parse_ports),
    "UID": ("proxy_uid", parse_uid),
    "DEFAULT_INBOUND_POLICY": ("default_inbound_policy", parse_inbound_policy),
    "TAP_AUTHORIZED_IDENTITIES": ("tap_authorized_identities", parse_identities),
}
ENV_NAMES = tuple(ENV_PREFIX + n for n in _TOP) + tuple(ENV_PREFIX + "PROXY_" + n for n in _PROXY)


def _parse_table(
    env: Mapping[str, str], prefix: str, table: dict[str, tuple[str, _Parser]]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (target, parse) in table.items():
        text = env.get(prefix + name)
        if text in (None, ""):
            continue
        try:
            values[target] = parse(text)
        except ConfigValueError as error:
            raise SettingsError(f"{prefix}{name}: {error}") from None
    return values


def load_settings(env: Mapping[str, str]) -> WebhookSettings:
    """Read ``MESHLET_WEBHOOK_*`` from ``env`` (``os.environ`` plus flags)."""
    values = _parse_table(env, ENV_PREFIX, _TOP)
    proxy = _parse_table(env, ENV_PREFIX + "PROXY_", _PROXY)
    if "listen" in values:
        values["listen_host"], values["listen_port"] = values.pop("listen")
    anchors = values.get("trust_anchors_file")
    if anchors is not None:
        try:
            values["trust_anchors_pem"] = _read_anchors(anchors)
        except ConfigValueError as error:
            raise SettingsError(f"{ENV_PREFIX}TRUST_ANCHORS_FILE: {error}") from None
    values["proxy"] = replace(WebhookSettings().proxy, **proxy)
    return WebhookSettings(**values)
