"""Canned ``/metrics`` pages in exactly the proxy's format (``proxy/metrics.py`` ``render``).

Families, label names, label order, bucket bounds and number formats are copied from the proxy's
metrics module, so a change there that breaks ``meshlet stat`` shows up as a diff here.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

BUCKETS = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)  # fmt: skip
NO_TLS = 'tls="no_identity",no_tls_reason="disabled"'
WEB_ID = "web.default.serviceaccount.identity.meshlet.cluster.local"
API_ID = "api.default.serviceaccount.identity.meshlet.cluster.local"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def http(direction: str, authority: str, tls: str = NO_TLS) -> str:
    return f'direction="{direction}",authority="{escape(authority)}",{tls}'


def tcp(direction: str, peer: str, target: str, tls: str = NO_TLS) -> str:
    return f'direction="{direction}",peer="{peer}",target_addr="{target}",{tls}'


@dataclass
class Page:
    """The proxy's counters; ``text()`` renders them as the proxy's ``Metrics.render`` does."""

    requests: dict[str, int] = field(default_factory=dict)
    responses: dict[tuple[str, int, str], int] = field(default_factory=dict)
    latencies: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    opened: dict[str, int] = field(default_factory=dict)
    open_now: dict[str, int] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    closed: dict[tuple[str, str], int] = field(default_factory=dict)
    info: str = ""

    def serve(self, labels: str, status: int, latency_ms: float, times: int = 1) -> None:
        classification = "failure" if status >= 500 else "success"
        for _ in range(times):
            self.requests[labels] = self.requests.get(labels, 0) + 1
            key = (labels, status, classification)
            self.responses[key] = self.responses.get(key, 0) + 1
            self.latencies.setdefault((labels, status), []).append(latency_ms)

    def text(self) -> str:
        lines: list[str] = []
        family(lines, "request_total", "counter", "Total count of HTTP requests.")
        lines.extend(f"request_total{{{k}}} {v}" for k, v in self.requests.items())
        family(lines, "response_total", "counter", "Total count of HTTP responses.")
        for (labels, status, classification), value in self.responses.items():
            lines.append(
                f'response_total{{{labels},status_code="{status}",'
                f'classification="{classification}"}} {value}'
            )
        family(
            lines, "response_latency_ms", "histogram", "Elapsed times between a request's headers "
            "being received and its response's headers being sent, in milliseconds."
        )  # fmt: skip
        for (labels, status), observed in self.latencies.items():
            counts = [0] * (len(BUCKETS) + 1)
            for value in observed:
                counts[bisect.bisect_left(BUCKETS, value)] += 1
            series = f'{labels},status_code="{status}"'
            cumulative = 0
            for bound, count in zip(BUCKETS, counts, strict=False):
                cumulative += count
                lines.append(f'response_latency_ms_bucket{{{series},le="{bound}"}} {cumulative}')
            lines.append(f'response_latency_ms_bucket{{{series},le="+Inf"}} {len(observed)}')
            lines.append(f"response_latency_ms_sum{{{series}}} {sum(observed):.3f}")
            lines.append(f"response_latency_ms_count{{{series}}} {len(observed)}")
        family(lines, "tcp_open_total", "counter", "Total count of opened connections.")
        lines.extend(f"tcp_open_total{{{k}}} {v}" for k, v in self.opened.items())
        family(lines, "tcp_open_connections", "gauge", "Number of currently-open connections.")
        for labels in self.opened:
            lines.append(f"tcp_open_connections{{{labels}}} {self.open_now.get(labels, 0)}")
        family(lines, "tcp_read_bytes_total", "counter", "Total count of bytes read from peers.")
        lines.extend(f"tcp_read_bytes_total{{{k}}} {v}" for k, v in self.read.items())
        family(lines, "tcp_write_bytes_total", "counter", "Total count of bytes written to peers.")
        lines.extend(f"tcp_write_bytes_total{{{k}}} {v}" for k, v in self.written.items())
        family(lines, "tcp_close_total", "counter", "Total count of closed connections.")
        for (labels, errno), value in self.closed.items():
            lines.append(f'tcp_close_total{{{labels},errno="{errno}"}} {value}')
        if self.info:
            family(lines, "meshlet_proxy_info", "gauge", "The proxy's pod.")
            lines.append(f"meshlet_proxy_info{{{self.info}}} 1")
        lines.append("")
        return "\n".join(lines)


def family(lines: list[str], name: str, kind: str, text: str) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")
