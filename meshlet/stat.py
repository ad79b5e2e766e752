"""``meshlet stat``: golden metrics per workload, as ``linkerd viz stat`` prints them.

Two sources, one row shape. From proxies' admin ports (``--admin``), ``rows_from_pods`` sums
what each pod counted over the window: inbound responses by classification (success rate, RPS),
inbound latency histogram buckets (quantiles by ``histogram_quantile``) and inbound open
connections. From Prometheus (``--prometheus``), the same numbers come back from Linkerd's own
PromQL (``stat_queries``) and ``rows_from_prometheus`` only groups them by workload. Both are pure:
series in, rows out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from meshlet.metricsource import OptionError, PodWindow, SourceError, Vector
from meshlet.metricsread import histogram_quantile
from meshlet.statargs import Source, add_source_arguments, resolve_source, window_text

__all__ = [
    "QUANTILES",
    "StatRow",
    "format_table",
    "main",
    "rows_from_pods",
    "rows_from_prometheus",
    "rows_json",
    "stat_line",
    "stat_queries",
]

QUANTILES: Final = (0.5, 0.95, 0.99)
_INBOUND: Final = ("direction", "inbound")
_STAT_FAMILIES: Final = ("response_total{", "response_latency_ms_bucket{", "tcp_open_connections{")


@dataclass(frozen=True, slots=True)
class StatRow:
    """One workload's golden metrics over the window; ``None`` where there was no traffic."""

    namespace: str
    name: str
    meshed: int
    pods: int
    success: float | None
    rps: float | None
    latency_ms: tuple[float | None, float | None, float | None]
    tcp_connections: int


@dataclass(slots=True)
class _Totals:
    pods: int = 0
    meshed: int = 0
    success: float = 0.0
    failure: float = 0.0
    rps: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    quantiles: dict[float, float] = field(default_factory=dict)
    tcp: float = 0.0


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _row(namespace: str, name: str, totals: _Totals) -> StatRow:
    requests = totals.success + totals.failure
    if totals.buckets:
        pairs = list(totals.buckets.items())
        latencies = [_finite(histogram_quantile(q, pairs)) for q in QUANTILES]
    else:
        latencies = [_finite(totals.quantiles.get(q, math.nan)) for q in QUANTILES]
    return StatRow(
        namespace=namespace,
        name=name,
        meshed=totals.meshed,
        pods=totals.pods,
        success=totals.success / requests if requests > 0 else None,
        rps=totals.rps if requests > 0 else None,
        latency_ms=(latencies[0], latencies[1], latencies[2]),
        tcp_connections=round(totals.tcp),
    )


def rows_from_pods(pods: Sequence[PodWindow]) -> list[StatRow]:
    """Sum each workload's pods: inbound responses, latency buckets and open connections."""
    by_workload: dict[tuple[str, str], _Totals] = {}
    for pod in pods:
        totals = by_workload.setdefault((pod.namespace, pod.workload), _Totals())
        totals.pods += 1
        totals.meshed += 1
        requests = 0.0
        for (name, labels), value in pod.deltas.items():
            if _INBOUND not in labels:
                continue
            if name == "response_total":
                classification = dict(labels).get("classification")
                if classification == "success":
                    totals.success += value
                elif classification == "failure":
                    totals.failure += value
                else:
                    continue
                requests += value
            elif name == "response_latency_ms_bucket":
                bound = float(dict(labels)["le"])
                totals.buckets[bound] = totals.buckets.get(bound, 0.0) + value
            elif name == "tcp_open_connections":
                totals.tcp += value
        totals.rps += requests / pod.seconds
    return [_row(ns, name, totals) for (ns, name), totals in sorted(by_workload.items())]


def stat_line(line: str) -> bool:
    """The sample lines ``rows_from_pods`` reads: inbound responses, buckets and connections.

    A label value cannot fake ``direction="inbound"``: inside a value the quotes are escaped.
    """
    return line.startswith(_STAT_FAMILIES) and 'direction="inbound"' in line


def stat_queries(kind: str, window: str, namespace: str = "") -> dict[str, str]:
    """Linkerd's PromQL for ``viz stat``, over our overlay's labels (``namespace``, ``<kind>``)."""
    where = f',namespace="{namespace}"' if namespace else ""
    inbound = f'{{direction="inbound"{where}}}'
    by = f"namespace, {kind}"
    queries = {
        "responses": f"sum(increase(response_total{inbound}[{window}])) "
        f"by ({by}, classification, tls)",
        "tcp": f"sum(tcp_open_connections{inbound}) by ({by})",
        "up": f'up{{job="meshlet-proxy"{where}}}',
    }
    for quantile in QUANTILES:
        queries[f"p{quantile}"] = (
            f"histogram_quantile({quantile}, sum(irate(response_latency_ms_bucket{inbound}"
            f"[{window}])) by (le, {by}))"
        )
    return queries


def rows_from_prometheus(
    kind: str, window_seconds: float, answers: Mapping[str, Vector]
) -> list[StatRow]:
    """Group the answers to ``stat_queries`` by (namespace, ``kind``); skip unnamed series."""
    by_workload: dict[tuple[str, str], _Totals] = {}

    def totals(labels: dict[str, str]) -> _Totals | None:
        name = labels.get(kind, "")
        if not name:
            return None  # a pod of another kind of workload (or of none)
        return by_workload.setdefault((labels.get("namespace", ""), name), _Totals())

    for labels, value in answers.get("up", []):
        if (found := totals(labels)) is not None:
            found.pods += 1
            found.meshed += 1 if value == 1 else 0
    for labels, value in answers.get("responses", []):
        if (found := totals(labels)) is None or math.isnan(value):
            continue
        if labels.get("classification") == "success":
            found.success += value
        elif labels.get("classification") == "failure":
            found.failure += value
        else:
            continue
        found.rps += value / window_seconds
    for labels, value in answers.get("tcp", []):
        if (found := totals(labels)) is not None and not math.isnan(value):
            found.tcp += value
    for quantile in QUANTILES:
        for labels, value in answers.get(f"p{quantile}", []):
            if (found := totals(labels)) is not None:
                found.quantiles[quantile] = value
    return [_row(ns, name, t) for (ns, name), t in sorted(by_workload.items())]


def _cells(row: StatRow) -> list[str]:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{int(value)}ms"

    return [
        row.name,
        f"{row.meshed}/{row.pods}",
        "-" if row.success is None else f"{row.success * 100:.2f}%",
        "-" if row.rps is None else f"{row.rps:.1f}rps",
        *(ms(value) for value in row.latency_ms),
        str(row.tcp_connections),
    ]


def format_table(rows: Sequence[StatRow]) -> str:
    """Linkerd's layout: names left-aligned, numbers right-aligned, NAMESPACE when known."""
    header = ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
    header.append("TCP_CONN")
    table = [header] + [_cells(row) for row in rows]
    left = 1
    if any(row.namespace for row in rows):
        table = [["NAMESPACE"]] + [[row.namespace or "-"] for row in rows]
        table = [
            a + b for a, b in zip(table, [header] + [_cells(row) for row in rows], strict=True)
        ]
        left = 2
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = []
    for line in table:
        cells = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def rows_json(rows: Sequence[StatRow]) -> list[dict[str, Any]]:
    """The ``-o json`` objects, with ``linkerd viz stat -o json``'s keys."""
    return [
        {
            "namespace": row.namespace,
            "name": row.name,
            "meshed": f"{row.meshed}/{row.pods}",
            "success": row.success,
            "rps": row.rps,
            "latency_ms_p50": row.latency_ms[0],
            "latency_ms_p95": row.latency_ms[1],
            "latency_ms_p99": row.latency_ms[2],
            "tcp_open_connections": row.tcp_connections,
        }
        for row in rows
    ]


def _collect(source: Source) -> list[StatRow]:
    if source.prometheus is not None:
        queries = stat_queries(source.kind, window_text(source.window), source.namespace)
        answers = {key: source.prometheus.query(promql) for key, promql in queries.items()}
        return rows_from_prometheus(source.kind, source.window, answers)
    rows = rows_from_pods(source.scrape(keep=stat_line))
    return [row for row in rows if not source.namespace or row.namespace == source.namespace]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="meshlet stat",
        description="Golden metrics per workload (success rate, RPS, latency, connections) "
        "from proxies' admin ports or from Prometheus, like 'linkerd viz stat'.",
    )
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    try:
        source = resolve_source(args)
        rows = _collect(source)
    except OptionError as error:
        print(f"meshlet stat: {error}", file=sys.stderr)
        return 2
    except SourceError as error:
        print(f"meshlet stat: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.output == "json":
        print(json.dumps(rows_json(rows), indent=2))
    elif not rows:
        print("No traffic found.", file=sys.stderr)
    else:
        print(format_table(rows))
    return 0
