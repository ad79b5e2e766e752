"""``meshlet stat``'s cost per proxy: parsing a ``/metrics`` page and turning two into a row.

Pages in the proxy's format with N outbound authorities (one 200 status each: request_total,
response_total, a 26-bucket latency histogram) plus one inbound series; N up to the proxy's
``MAX_AUTHORITIES`` (1,000). Measured per page: ``parse_metrics`` (prometheus_client's parser)
of the whole page, of the lines ``meshlet stat`` keeps (``stat_line``: inbound series) and of those
``meshlet edges`` keeps (``edge_line``: no latency buckets); then ``window_deltas`` +
``rows_from_pods`` over two parsed pages. Reference (same run): a bare
loop that only splits each line at its last space, the floor for any text parser in Python.

    python -m bench stat [--quick]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from meshlet.edges import edge_line
from meshlet.metricsource import PodWindow
from meshlet.metricsread import Scrape, parse_metrics, window_deltas
from meshlet.stat import StatRow, rows_from_pods, stat_line

_BUCKETS: tuple[int, ...] = (1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000)
_BUCKETS += (2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000)
_TLS = 'tls="no_identity",no_tls_reason="disabled"'


def _page(authorities: int, requests: int) -> str:
    lines = ["# TYPE request_total counter", "# TYPE response_total counter"]
    names = [("inbound", "web.default.svc.cluster.local:8080")]
    names += [("outbound", f"svc{i}.default.svc.cluster.local:80") for i in range(authorities)]
    for direction, authority in names:
        labels = f'direction="{direction}",authority="{authority}",{_TLS}'
        lines.append(f"request_total{{{labels}}} {requests}")
        lines.append(
            f'response_total{{{labels},status_code="200",classification="success"}} {requests}'
        )
    lines.append("# TYPE response_latency_ms histogram")
    for direction, authority in names:
        series = f'direction="{direction}",authority="{authority}",{_TLS},status_code="200"'
        lines += [f'response_latency_ms_bucket{{{series},le="{b}"}} {requests}' for b in _BUCKETS]
        lines.append(f'response_latency_ms_bucket{{{series},le="+Inf"}} {requests}')
        lines.append(f"response_latency_ms_sum{{{series}}} {requests * 0.5:.3f}")
        lines.append(f"response_latency_ms_count{{{series}}} {requests}")
    return "\n".join(lines) + "\n"


def _floor(text: str) -> int:
    return sum(1 for line in text.splitlines() if line[:1] != "#" and line.rpartition(" ")[2])


def _row(first: Scrape, second: Scrape) -> list[StatRow]:
    deltas = window_deltas(first, second)
    return rows_from_pods([PodWindow("127.0.0.1:4191", "", "web", "web", 1.0, deltas)])


def _median(function: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(args: list[str]) -> None:
    quick = "--quick" in args
    rounds = 3 if quick else 5
    print("authorities  lines    bytes  all_ms  stat_ms  edges_ms  row_ms  reference_split_ms")
    for authorities in (10, 100) if quick else (10, 100, 1000):
        before, after = _page(authorities, 100), _page(authorities, 160)
        first, second = parse_metrics(before), parse_metrics(after)
        parse = _median(lambda: parse_metrics(after), rounds)  # noqa: B023 (called in the loop)
        stat = _median(lambda: parse_metrics(after, stat_line), rounds)  # noqa: B023
        edges = _median(lambda: parse_metrics(after, edge_line), rounds)  # noqa: B023
        rows = _median(lambda: _row(first, second), rounds)  # noqa: B023
        floor = _median(lambda: _floor(after), rounds)  # noqa: B023
        print(
            f"{authorities:11d}  {after.count(chr(10)):5d}  {len(after):7d}  {parse * 1e3:6.1f}"
            f"  {stat * 1e3:7.1f}  {edges * 1e3:8.1f}  {rows * 1e3:6.2f}  {floor * 1e3:18.2f}"
        )
