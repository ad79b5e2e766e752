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
(+ ``errno``). Every series carries ``direction`` and the TLS state: ``tls="no_identity"`` with
``no_tls_reason="disabled"`` until identity arrives with the mesh issue.

The number of distinct authorities is capped (``MAX_AUTHORITIES``) because clients choose them:
further ones are counted under ``authority="overflow"`` rather than growing memory without bound.
"""

from __future__ import annotations

import bisect
from typing import Final

__all__ = [
    "LATENCY_BUCKETS_MS",
    "MAX_AUTHORITIES",
    "Metrics",
    "TcpConnection",
    "classify",
]

LATENCY_BUCKETS_MS: Final = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)  # fmt: skip
MAX_AUTHORITIES: Final = 1000
_TLS: Final = 'tls="no_identity",no_tls_reason="disabled"'
_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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

    def __init__(self) -> None:
        self._authority_labels: dict[tuple[str, bytes], str] = {}
        self._requests: dict[str, int] = {}
        self._responses: dict[tuple[str, int, str], int] = {}
        self._latency: dict[tuple[str, int], _Histogram] = {}
        self._tcp_opened: dict[str, int] = {}
        self._tcp_closed: dict[tuple[str, str], int] = {}
        self._tcp_closed_read: dict[str, int] = {}
        self._tcp_closed_written: dict[str, int] = {}
        self._tcp_open: dict[TcpConnection, None] = {}

    # -- HTTP -------------------------------------------------------------------------------------

    def http_labels(self, direction: str, authority: bytes) -> str:
        """The label text for requests to ``authority`` (cached; capped in number)."""
        key = (direction, authority)
        labels = self._authority_labels.get(key)
        if labels is None:
            if len(self._authority_labels) >= MAX_AUTHORITIES:
                name = "overflow"
            else:
                name = _escape(authority.decode("ascii", "replace"))
            labels = f'direction="{direction}",authority="{name}",{_TLS}'
            self._authority_labels[key] = labels
        return labels

    def request(self, labels: str) -> None:
        self._requests[labels] = self._requests.get(labels, 0) + 1

    def response_headers(self, labels: str, status: int, latency_ms: float) -> None:
        key = (labels, status)
        histogram = self._latency.get(key)
        if histogram is None:
            histogram = self._latency[key] = _Histogram()
        histogram.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        histogram.count += 1
        histogram.sum += latency_ms

    def response_end(self, labels: str, status: int, classification: str) -> None:
        key = (labels, status, classification)
        self._responses[key] = self._responses.get(key, 0) + 1

    # -- TCP --------------------------------------------------------------------------------------

    def tcp_open(self, direction: str, peer: str, target: str) -> TcpConnection:
        labels = f'direction="{direction}",peer="{peer}",target_addr="{_escape(target)}",{_TLS}'
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
        for (labels, status), histogram in self._latency.items():
            series = f'{labels},status_code="{status}"'
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS_MS, histogram.buckets, strict=False):
                cumulative += count
                lines.append(f'response_latency_ms_bucket{{{series},le="{bound}"}} {cumulative}')
            lines.append(f'response_latency_ms_bucket{{{series},le="+Inf"}} {histogram.count}')
            lines.append(f"response_latency_ms_sum{{{series}}} {histogram.sum:.3f}")
            lines.append(f"response_latency_ms_count{{{series}}} {histogram.count}")
        self._render_tcp(lines)
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


def _family(lines: list[str], name: str, kind: str, text: str) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")
