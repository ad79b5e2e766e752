"""The proxy's settings: one frozen object read once from the ``MESHLET_PROXY_*`` variables.

The injector writes these variables (docs/architecture.md lists them); nothing else configures the
proxy. ``load_settings`` validates everything up front so a bad value stops the process with one
line naming the variable, before any listener opens. Durations use ``meshlet.durations`` (``100ms``,
``10s``); port lists are comma-separated numbers and ``a-b`` ranges.

Identity and discovery variables (``MESHLET_PROXY_IDENTITY_*``, ``..._DESTINATION_*``) are read
by their own packages (``proxy/identity``, ``proxy/discovery``); the ``OUTBOUND_*`` mesh-client
settings below apply only when discovery is configured.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from meshlet import names
from meshlet.durations import DurationError, parse_duration
from meshlet.logs import LogFormat
from proxy.policy import (
    DEFAULT_CLUSTER_NETWORKS,
    DefaultInboundPolicy,
    Network,
    parse_cluster_networks,
    parse_policy,
)

__all__ = [
    "Address",
    "ProxySettings",
    "SettingsError",
    "load_settings",
    "parse_address",
    "parse_ports",
    "unknown_variables",
]

PREFIX: Final = "MESHLET_PROXY_"
_MAX_PORT: Final = 65535
_LOG_LEVELS: Final = frozenset({"trace", "debug", "info", "warn", "warning", "error"})
_LOG_FORMATS: Final = ("plain", "json")


class SettingsError(ValueError):
    """A ``MESHLET_PROXY_*`` variable holds a value the proxy cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Address:
    """A listen address: an IP literal (IPv4 or IPv6) and a TCP port (0 = any free port)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySettings:
    """Everything the proxy process reads from its environment, validated.

    Each field says its unit and why its default was chosen; the defaults are Linkerd's unless a
    field says otherwise, so operators' knowledge carries over.
    """

    inbound_listen: Address = Address("0.0.0.0", names.PROXY_INBOUND_PORT)  # noqa: S104
    """Where iptables redirects connections into the pod (all interfaces: they arrive on the pod
    IP). Linkerd's 4143."""

    outbound_listen: Address = Address("127.0.0.1", names.PROXY_OUTBOUND_PORT)
    """Where iptables redirects the pod's own outbound connections; loopback only, since only the
    pod's processes (redirected by the OUTPUT chain) may use it. Linkerd's 4140."""

    admin_listen: Address = Address("0.0.0.0", names.PROXY_ADMIN_PORT)  # noqa: S104
    """``/metrics``, ``/live``, ``/ready``, ``/shutdown``; all interfaces so the kubelet's probes
    and Prometheus reach it. Linkerd's 4191."""

    inbound_ports: frozenset[int] = frozenset()
    """The application's container ports (informational for now; the injector fills it)."""

    opaque_ports: frozenset[int] = frozenset(names.DEFAULT_OPAQUE_PORTS)
    """Original-destination ports forwarded as opaque TCP without protocol detection: the
    server-speaks-first protocols (SMTP, MySQL, Postgres, Redis, memcached, ...) that would
    otherwise wait out the detection timeout. Linkerd's default list."""

    detect_timeout: float = 10.0
    """Seconds to wait for the first bytes before forwarding as opaque TCP. Linkerd's 10 s: long
    enough for a slow client on a busy node, short enough that a server-speaks-first protocol on
    a non-opaque port recovers."""

    inbound_connect_timeout: float = 0.1
    """Seconds to connect to the application on loopback. 100 ms (Linkerd's): a local connect
    either succeeds at once or the app is not listening."""

    outbound_connect_timeout: float = 1.0
    """Seconds to connect to an upstream across the network (Linkerd's 1 s): SYN retransmission
    starts at 1 s, so a longer wait rarely helps."""

    shutdown_grace_period: float = 30.0
    """Seconds in-flight requests may take to finish after SIGTERM before the proxy exits; the
    Kubernetes default terminationGracePeriodSeconds, so the kubelet does not kill us first."""

    shutdown_endpoint_enabled: bool = False
    """Whether ``POST /shutdown`` (loopback clients only) is served: off by default because any
    process in the pod could stop the proxy with it; Jobs turn it on."""

    admin_request_timeout: float = 10.0
    """Seconds an admin connection may take (including keep-alive idling): probes and scrapes
    take milliseconds, so 10 s only ever cuts off stuck or hostile clients."""

    outbound_failfast_timeout: float = 3.0
    """Seconds an outbound request (or connection) to a discovered service waits for an
    endpoint to become available before the proxy answers 503 with ``meshlet-proxy-error:
    no_endpoints`` (or ``all_endpoints_ejected``). Linkerd's outbound failfast timeout (3 s):
    long enough to ride out a rollout's empty moment, short enough that clients do not hang."""

    outbound_discovery_idle_timeout: float = 5.0
    """Seconds an outbound authority may go unused before its discovery streams are released
    (and its balancer state forgotten). Linkerd's outbound discovery idle timeout (5 s)."""

    outbound_max_idle_per_endpoint: int = 32
    """Idle HTTP/1.1 keep-alive connections kept per endpoint for reuse (beyond it they are
    closed). Enough for a few hundred requests/s of short exchanges per endpoint without a
    connect each; bounded so a burst does not leave thousands of sockets open."""

    outbound_http2_per_stream: bool = True
    """Whether outbound HTTP/2 to a discovered destination is balanced per stream (each request
    its own endpoint, route, retries: ``proxy/h2mux.py``); ``False`` picks one endpoint per client
    connection and relays its frames (cheaper per request, balanced only across connections)."""

    outbound_http1_upgrade: bool = False
    """Whether an outbound HTTP/1 request to a meshed endpoint whose proxy speaks HTTP/2
    (discovery's ``protocol_hint: h2``, identity on here) travels as a stream on the shared HTTP/2
    connection to that peer's proxy (``proxy/h1upgrade.py``; the peer's inbound gateway,
    ``proxy/h1gateway.py``, speaks HTTP/1 to its application), as Linkerd does. Off by default:
    measured, it saves CPU only when requests arrive together, and costs CPU under evenly
    spaced load and throughput at saturation (docs/performance.md, ``## mesh``)."""

    outbound_retry_buffer_bytes: int = 65536
    """Bytes of an HTTP/1 request body kept for a retry (Linkerd's 64 KiB); a longer body is
    streamed and the request is never retried after it was sent (a failed connect still is)."""

    http1_pool_idle_timeout: float = 1.0
    """Seconds an idle HTTP/1.1 keep-alive upstream connection may wait and still take the next
    request; one idle longer is closed and a new one opened. Below the keep-alive timeouts of
    common servers (gunicorn 2 s; Node, uvicorn, Apache 5 s; nginx 75 s), so a server never
    times out a connection just as the proxy reuses it: that race would fail a non-idempotent
    request (``POST``) with a 502, which may not be replayed (``proxy/h1/replay.py``). Linkerd's
    is 3 s; 1 s also covers gunicorn, and costs one connect per request only to clients that
    pause longer than that. ``0``: idle connections are never reused."""

    http1_replay_buffer_bytes: int = 65536
    """Bytes of an idempotent HTTP/1 request body the plain path keeps while streaming it, so
    the request can be sent once more when a reused connection turns out dead before any
    response byte (``proxy/h1/replay.py``). A longer body is not kept (memory stays bounded) and
    such a failure is a 502. 64 KiB, as Linkerd's retry buffer."""

    http2_keepalive_interval: float = 10.0
    """Seconds of silence on an HTTP/2 connection before the proxy sends a PING (Linkerd's 10 s)."""

    http2_keepalive_timeout: float = 3.0
    """Seconds to wait for the PING's acknowledgement before closing the connection as dead
    (Linkerd's 3 s)."""

    default_inbound_policy: DefaultInboundPolicy = DefaultInboundPolicy.ALL_UNAUTHENTICATED
    """Who may reach the application through the inbound listener (``proxy/policy.py``,
    docs/mesh-tls.md "Inbound policy"). Linkerd's default, ``all-unauthenticated``: a mesh must
    not break unmeshed clients until the operator says so."""

    cluster_networks: tuple[Network, ...] = DEFAULT_CLUSTER_NETWORKS
    """Client networks the ``cluster-*`` policies accept (Linkerd's default: the private
    ranges, where pod and node addresses live)."""

    log_level: str = "info"
    """trace, debug, info, warn or error."""

    log_format: LogFormat = "plain"
    """``plain`` for people, ``json`` for log pipelines."""

    pod_name: str = ""
    pod_namespace: str = ""
    pod_ip: str = ""
    service_account: str = ""
    """Pod metadata from the downward API; empty outside Kubernetes."""

    workload: str = ""
    """The pod's workload (a Deployment's name...), from the injector; names the pod's metrics
    in ``meshlet_proxy_info``."""

    extra: Mapping[str, str] = field(default_factory=dict)
    """Unrecognised ``MESHLET_PROXY_*`` variables, kept for the mesh issue (identity, discovery)."""


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port`` with an IP literal host."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return Address(host, _port(port_text, allow_zero=True))


def parse_ports(text: str) -> frozenset[int]:
    """``"80,8080-8090"`` → the set of ports; an empty string is the empty set."""
    ports: set[int] = set()
    for raw_item in text.split(","):
        item = raw_item.strip()
        if not item:
            continue
        low_text, dash, high_text = item.partition("-")
        low = _port(low_text)
        high = _port(high_text) if dash else low
        if high < low:
            raise ValueError(f"range {item!r} runs backwards")
        ports.update(range(low, high + 1))
    return frozenset(ports)


def _port(text: str, *, allow_zero: bool = False) -> int:
    value = text.strip()
    if not value.isdigit() or len(value) > 5:
        raise ValueError(f"{text!r} is not a port number")
    port = int(value)
    if port > _MAX_PORT or (port == 0 and not allow_zero):
        raise ValueError(f"port {port} is out of range 1-{_MAX_PORT}")
    return port


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"true", "1", "yes"}:
        return True
    if value in {"false", "0", "no", ""}:
        return False
    raise ValueError(f"{text!r} is not true or false")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _positive_duration(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def _count(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or len(value) > 9:
        raise ValueError(f"{text!r} is not a non-negative whole number")
    return int(value)


def _log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in _LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of trace, debug, info, warn, error")
    return value


def _log_format(text: str) -> LogFormat:
    value = text.strip().lower()
    if value == "plain":
        return "plain"
    if value == "json":
        return "json"
    raise ValueError(f"{text!r} is not one of {', '.join(_LOG_FORMATS)}")


def _text(text: str) -> str:
    return text.strip()


# variable suffix -> (field name, parser)
_FIELDS: Final = {
    "INBOUND_LISTEN_ADDR": ("inbound_listen", parse_address),
    "OUTBOUND_LISTEN_ADDR": ("outbound_listen", parse_address),
    "ADMIN_LISTEN_ADDR": ("admin_listen", parse_address),
    "INBOUND_PORTS": ("inbound_ports", parse_ports),
    "OPAQUE_PORTS": ("opaque_ports", parse_ports),
    "DETECT_TIMEOUT": ("detect_timeout", _positive_duration),
    "INBOUND_CONNECT_TIMEOUT": ("inbound_connect_timeout", _positive_duration),
    "OUTBOUND_CONNECT_TIMEOUT": ("outbound_connect_timeout", _positive_duration),
    "SHUTDOWN_GRACE_PERIOD": ("shutdown_grace_period", _duration),
    "SHUTDOWN_ENDPOINT_ENABLED": ("shutdown_endpoint_enabled", _bool),
    "ADMIN_REQUEST_TIMEOUT": ("admin_request_timeout", _positive_duration),
    "OUTBOUND_FAILFAST_TIMEOUT": ("outbound_failfast_timeout", _positive_duration),
    "OUTBOUND_DISCOVERY_IDLE_TIMEOUT": ("outbound_discovery_idle_timeout", _positive_duration),
    "OUTBOUND_MAX_IDLE_PER_ENDPOINT": ("outbound_max_idle_per_endpoint", _count),
    "OUTBOUND_HTTP2_PER_STREAM": ("outbound_http2_per_stream", _bool),
    "OUTBOUND_RETRY_BUFFER_BYTES": ("outbound_retry_buffer_bytes", _count),
    "OUTBOUND_HTTP1_UPGRADE": ("outbound_http1_upgrade", _bool),
    "HTTP1_POOL_IDLE_TIMEOUT": ("http1_pool_idle_timeout", _duration),
    "HTTP1_REPLAY_BUFFER_BYTES": ("http1_replay_buffer_bytes", _count),
    "HTTP2_KEEPALIVE_INTERVAL": ("http2_keepalive_interval", _positive_duration),
    "HTTP2_KEEPALIVE_TIMEOUT": ("http2_keepalive_timeout", _positive_duration),
    "DEFAULT_INBOUND_POLICY": ("default_inbound_policy", parse_policy),
    "CLUSTER_NETWORKS": ("cluster_networks", parse_cluster_networks),
    "LOG_LEVEL": ("log_level", _log_level),
    "LOG_FORMAT": ("log_format", _log_format),
    "POD_NAME": ("pod_name", _text),
    "POD_NAMESPACE": ("pod_namespace", _text),
    "POD_IP": ("pod_ip", _text),
    "SERVICE_ACCOUNT": ("service_account", _text),
    "WORKLOAD": ("workload", _text),
}
# Read by other parts of the mesh (tap, identity, discovery): kept in ``extra`` silently.
_KNOWN_ELSEWHERE: Final = ("TAP_", "IDENTITY_", "DESTINATION_")


def unknown_variables(settings: ProxySettings) -> list[str]:
    """Variables in ``extra`` that no part of the mesh reads (probably typos), for one warning."""
    return sorted(
        PREFIX + suffix for suffix in settings.extra if not suffix.startswith(_KNOWN_ELSEWHERE)
    )


def load_settings(environ: Mapping[str, str]) -> ProxySettings:
    """Read and validate every ``MESHLET_PROXY_*`` variable; raise ``SettingsError`` on the first
    bad one (the message names the variable and the value)."""
    values: dict[str, object] = {}
    extra: dict[str, str] = {}
    for key in sorted(environ):
        if not key.startswith(PREFIX):
            continue
        suffix = key.removeprefix(PREFIX)
        spec = _FIELDS.get(suffix)
        if spec is None:
            # Not an error: the injector may be newer than this proxy. ``unknown_variables``
            # lets the process log them once, so a typo is still visible.
            extra[suffix] = environ[key]
            continue
        name, parse = spec
        try:
            values[name] = parse(environ[key])
        except ValueError as exc:
            raise SettingsError(f"{key}: {exc}") from None
    settings = ProxySettings(**values, extra=extra)  # type: ignore[arg-type]
    if settings.http2_keepalive_timeout >= settings.http2_keepalive_interval:
        raise SettingsError(
            f"{PREFIX}HTTP2_KEEPALIVE_TIMEOUT must be shorter than {PREFIX}HTTP2_KEEPALIVE_INTERVAL"
        )
    return settings
