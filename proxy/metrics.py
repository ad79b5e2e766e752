"""Golden metrics with Linkerd's names and labels, kept as plain counters and rendered on scrape.

The hot path pays one dict lookup and an integer add per event: label sets are rendered to their
Prometheus text once and cached (``_label_text``), counters are dicts keyed by that text, and
per-connection byte counts are attributes on a ``TcpConnection`` that the scrape sums. Nothing here
awaits or locks (the proxy is one Trio thread), and the text format is written by hand so no
per-request call goes through a metrics library's label machinery.

Families (Linkerd's ``linkerd2-proxy`` legacy names, which the viz dashboards query):
``request_total``, ``response_total`` (+ ``status_code``, ``classification``),
``response_latency_ms`` (time to response headers, Linkerd's buckets), ``tcp_open_total``,
``tcp_open_connections``, ``tcp_read_bytes_total``, ``tcp_write_bytes_total``, ``tcp_close_total``
(+ ``errno``). Every series carries ``direction`` and the TLS state (``TLS_DISABLED``,
``tls="no_identity",no_tls_reason="disabled"``, unless the caller passes the label text of
``proxy.mtls.TlsLabels``); outbound series to an endpoint discovery named also carry its
``dst_*`` labels (``dst_labels``). Route families (``route_request_total``,
``route_response_total``, ``route_response_latency_ms`` with ``dst`` and ``rt_route``) exist
for destinations whose ServiceProfile names routes.

``meshlet_proxy_info{namespace,pod,workload} 1`` names the pod when ``info`` is given (``meshlet
stat``/``edges`` group by it).

The number of distinct authorities is capped (``MAX_AUTHORITIES``) because clients choose them:
further ones are counted under ``authority="overflow"`` rather than growing memory without bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from typing import Final

__all__ = [
    "LATENCY_BUCKETS_MS",
    "MAX_AUTHORITIES",
    "TLS_DISABLED",
    "Metrics",
    "dst_labels",
    "escape_label",
    "TcpConnection",
    "classify",
]

LATENCY_BUCKETS_MS: Final = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)  # fmt: skip
MAX_AUTHORITIES: Final = 1000
TLS_DISABLED: Final = 'tls="no_identity",no_tls_reason="disabled"'
_TLS: Final = TLS_DISABLED
_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


escape_label = _escape
"""A label value as the text format needs it (backslash, quote and newline escaped)."""


def dst_labels(labels: Mapping[str, str]) -> str:
    """``dst_<name>="<value>"`` for each of an endpoint's discovery labels (sorted), comma-led
    (``,dst_pod="web-0",...``) so it appends to a label text; empty without labels."""
    return "".join(
        f',dst_{_label_name(name)}="{_escape(value)}"' for name, value in sorted(labels.items())
    )


def _label_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def classify(status: int, grpc_status: int | None) -> str:
    """Linkerd's response classification: 5xx, or a non-zero grpc-status, is a failure."""
    if status >= 500 or (grpc_status is not None and grpc_status != 0):
        return "failure"
    return "success"


class TcpConnection:
    """Byte counts of one open connection; the owner adds to ``read``/``written`` directly."""

    __slots__ = ("labels", "read", "written")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.read = 0
        self.written = 0


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.count = 0
        self.sum = 0.0


class Metrics:
    """The proxy's counters; one instance per process, passed to every listener."""

    content_type: Final = _CONTENT_TYPE

    def __init__(self, info: Mapping[str, str] | None = None) -> None:
        self._info = (
            ",".join(f'{_label_name(k)}="{_escape(v)}"' for k, v in info.items()) if info else None
        )
        self._authority_labels: dict[tuple[str, bytes, str, str], str] = {}
        self._requests: dict[str, int] = {}
        self._responses: dict[tuple[str, int, str], int] = {}
        self._latency: dict[tuple[str, int], _Histogram] = {}
        self._tcp_opened: dict[str, int] = {}
        self._tcp_closed: dict[tuple[str, str], int] = {}
        self._tcp_closed_read: dict[str, int] = {}
        self._tcp_closed_written: dict[str, int] = {}
        self._tcp_open: dict[TcpConnection, None] = {}
        self._route_labels: dict[tuple[str, str, str], str] = {}
        self._route_requests: dict[str, int] = {}
        self._route_responses: dict[tuple[str, int, str], int] = {}
        self._route_latency: dict[tuple[str, int], _Histogram] = {}
        self._collectors: dict[str, Callable[[list[str]], None]] = {}

    def collect(self, name: str, render: Callable[[list[str]], None]) -> None:
        """Have ``render(lines)`` append its families at every scrape (once per ``name``):
        state kept elsewhere (the balancers) is read only when someone scrapes."""
        self._collectors[name] = render

    # -- HTTP -------------------------------------------------------------------------------------

    def http_labels(self, direction: str, authority: bytes, tls: str = _TLS, dst: str = "") -> str:
        """The label text for requests to ``authority`` (cached; capped in number). ``tls`` is
        the TLS label text, ``dst`` the endpoint's ``dst_labels`` (outbound, discovered)."""
        key = (direction, authority, tls, dst)
        labels = self._authority_labels.get(key)
        if labels is None:
            if len(self._authority_labels) >= MAX_AUTHORITIES:
                name = "overflow"
                dst = ""
            else:
                name = _escape(authority.decode("ascii", "replace"))
            labels = f'direction="{direction}",authority="{name}",{tls}{dst}'
            self._authority_labels[key] = labels
        return labels

    def route_labels(self, direction: str, dst: str, route: str) -> str:
        """The label text of a ServiceProfile route's series (cached; capped in number)."""
        key = (direction, dst, route)
        labels = self._route_labels.get(key)
        if labels is None:
            if len(self._route_labels) >= MAX_AUTHORITIES:
                dst, route = "overflow", "overflow"
            labels = f'direction="{direction}",dst="{_escape(dst)}",rt_route="{_escape(route)}"'
            self._route_labels[key] = labels
        return labels

    def route_request(self, labels: str) -> None:
        self._route_requests[labels] = self._route_requests.get(labels, 0) + 1

    def route_response(
        self, labels: str, status: int, classification: str, latency_ms: float
    ) -> None:
        key = (labels, status, classification)
        self._route_responses[key] = self._route_responses.get(key, 0) + 1
        _observe(self._route_latency, (labels, status), latency_ms)

    def request(self, labels: str) -> None:
        self._requests[labels] = self._requests.get(labels, 0) + 1

    def response_headers(self, labels: str, status: int, latency_ms: float) -> None:
        _observe(self._latency, (labels, status), latency_ms)

    def response_end(self, labels: str, status: int, classification: str) -> None:
        key = (labels, status, classification)
        self._responses[key] = self._responses.get(key, 0) + 1

    # -- TCP --------------------------------------------------------------------------------------

    def tcp_open(
        self, direction: str, peer: str, target: str, tls: str = _TLS, dst: str = ""
    ) -> TcpConnection:
        labels = f'direction="{direction}",peer="{peer}",target_addr="{_escape(target)}",{tls}{dst}'
        self._tcp_opened[labels] = self._tcp_opened.get(labels, 0) + 1
        connection = TcpConnection(labels)
        self._tcp_open[connection] = None
        return connection

    def tcp_close(self, connection: TcpConnection, errno: str = "") -> None:
        if self._tcp_open.pop(connection, 1) is not None:
            return  # closed twice: count once
        labels = connection.labels
        key = (labels, errno)
        self._tcp_closed[key] = self._tcp_closed.get(key, 0) + 1
        self._tcp_closed_read[labels] = self._tcp_closed_read.get(labels, 0) + connection.read
        self._tcp_closed_written[labels] = (
            self._tcp_closed_written.get(labels, 0) + connection.written
        )

    # -- exposition -------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        if self._info is not None:
            _family(lines, "meshlet_proxy_info", "gauge", "The proxy's pod and workload.")
            lines.append(f"meshlet_proxy_info{{{self._info}}} 1")
        _family(lines, "request_total", "counter", "Total count of HTTP requests.")
        lines.extend(f"request_total{{{k}}} {v}" for k, v in self._requests.items())
        _family(lines, "response_total", "counter", "Total count of HTTP responses.")
        for (labels, status, classification), value in self._responses.items():
            lines.append(
                f'response_total{{{labels},status_code="{status}",'
                f'classification="{classification}"}} {value}'
            )
        _family(
            lines, "response_latency_ms", "histogram", "Elapsed times between a request's headers "
            "being received and its response's headers being sent, in milliseconds."
        )  # fmt: skip
        _render_histograms(lines, "response_latency_ms", self._latency)
        self._render_tcp(lines)
        if self._route_labels:
            self._render_routes(lines)
        for render in self._collectors.values():
            render(lines)
        lines.append("")
        return "\n".join(lines).encode()

    def _render_tcp(self, lines: list[str]) -> None:
        open_count: dict[str, int] = {}
        read = dict(self._tcp_closed_read)
        written = dict(self._tcp_closed_written)
        for connection in self._tcp_open:
            labels = connection.labels
            open_count[labels] = open_count.get(labels, 0) + 1
            read[labels] = read.get(labels, 0) + connection.read
            written[labels] = written.get(labels, 0) + connection.written
        _family(lines, "tcp_open_total", "counter", "Total count of opened connections.")
        lines.extend(f"tcp_open_total{{{k}}} {v}" for k, v in self._tcp_opened.items())
        _family(lines, "tcp_open_connections", "gauge", "Number of currently-open connections.")
        for labels in self._tcp_opened:
            lines.append(f"tcp_open_connections{{{labels}}} {open_count.get(labels, 0)}")
        _family(lines, "tcp_read_bytes_total", "counter", "Total count of bytes read from peers.")
        lines.extend(f"tcp_read_bytes_total{{{k}}} {v}" for k, v in read.items())
        _family(lines, "tcp_write_bytes_total", "counter", "Total count of bytes written to peers.")
        lines.extend(f"tcp_write_bytes_total{{{k}}} {v}" for k, v in written.items())
        _family(lines, "tcp_close_total", "counter", "Total count of closed connections.")
        for (labels, errno), value in self._tcp_closed.items():
            lines.append(f'tcp_close_total{{{labels},errno="{errno}"}} {value}')

    def _render_routes(self, lines: list[str]) -> None:
        _family(lines, "route_request_total", "counter", "Total count of requests by route.")
        lines.extend(f"route_request_total{{{k}}} {v}" for k, v in self._route_requests.items())
        _family(lines, "route_response_total", "counter", "Total count of responses by route.")
        for (labels, status, classification), value in self._route_responses.items():
            lines.append(
                f'route_response_total{{{labels},status_code="{status}",'
                f'classification="{classification}"}} {value}'
            )
        _family(
            lines, "route_response_latency_ms", "histogram",
            "Elapsed times between a request's headers and its response's headers, by route.",
        )  # fmt: skip
        _render_histograms(lines, "route_response_latency_ms", self._route_latency)


def _observe(
    histograms: dict[tuple[str, int], _Histogram], key: tuple[str, int], ms: float
) -> None:
    histogram = histograms.get(key)
    if histogram is None:
        histogram = histograms[key] = _Histogram()
    histogram.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
    histogram.count += 1
    histogram.sum += ms


def _render_histograms(
    lines: list[str], name: str, histograms: dict[tuple[str, int], _Histogram]
) -> None:
    for (labels, status), histogram in histograms.items():
        series = f'{labels},status_code="{status}"'
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS_MS, histogram.buckets, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{{series},le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{series},le="+Inf"}} {histogram.count}')
        lines.append(f"{name}_sum{{{series}}} {histogram.sum:.3f}")
        lines.append(f"{name}_count{{{series}}} {histogram.count}")


def _family(lines: list[str], name: str, kind: str, text: str) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")
