"""``meshlet edges``: who talked to whom during the window, and with which identities.

Theory of operation. A proxy sees each edge from one end. Its *outbound* series name the
destination (``dst_namespace`` and ``dst_<kind>`` / ``dst_service`` from discovery, else the
``authority``) and, when mTLS was used, the ``server_id`` the server proved. Its *inbound*
series carry the ``client_id`` the client proved. ``edges_from_flows`` joins the two: an outbound
edge takes the ``client_id`` seen at its destination from the source's namespace (the one whose
ServiceAccount matches the source's name, or the only one); inbound identities left over become
edges of their own (a meshed client whose outbound side was not scraped). An edge is secured
when every series of it had ``tls="true"``. Pure: flows in, edges out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from meshlet.metricsource import OptionError, PodWindow, SourceError, Vector
from meshlet.statargs import KINDS, Source, add_source_arguments, resolve_source, window_text

__all__ = [
    "Edge",
    "Flow",
    "edge_line",
    "edge_queries",
    "edges_from_flows",
    "edges_json",
    "flows_from_pods",
    "flows_from_prometheus",
    "format_edges",
    "main",
    "parse_identity",
]

_OUTBOUND: Final = ("direction", "outbound")
_INBOUND: Final = ("direction", "inbound")


@dataclass(frozen=True, slots=True)
class Flow:
    """Traffic one workload's proxies counted, with the series' labels."""

    namespace: str
    workload: str
    direction: str
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class Edge:
    src: str
    dst: str
    src_ns: str
    dst_ns: str
    secured: bool
    client_id: str
    server_id: str


@dataclass(slots=True)
class _Seen:
    secured: bool = True
    server_ids: set[str] = field(default_factory=set)


def parse_identity(identity: str) -> tuple[str, str] | None:
    """``(serviceaccount, namespace)`` of ``<sa>.<ns>.serviceaccount.identity.<cp>.<domain>``."""
    parts = identity.split(".")
    if len(parts) >= 4 and parts[2] == "serviceaccount" and parts[3] == "identity":
        return parts[0], parts[1]
    return None


def _destination(labels: dict[str, str], kind: str) -> tuple[str, str]:
    namespace = labels.get("dst_namespace", "")
    for candidate in (kind, *KINDS):
        if name := labels.get(f"dst_{candidate}"):
            return namespace, name
    if name := labels.get("dst_service"):
        return namespace, name
    authority = labels.get("authority") or labels.get("target_addr", "")
    parts = authority.rpartition(":")[0].split(".") if ":" in authority else authority.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return parts[1], parts[0]  # name.namespace.svc.cluster-domain:port
    return namespace, authority or "unknown"


def edges_from_flows(flows: Iterable[Flow], kind: str = "deployment") -> list[Edge]:
    outbound: dict[tuple[str, str, str, str], _Seen] = {}
    inbound: dict[tuple[str, str], set[str]] = {}
    for flow in flows:
        secured = flow.labels.get("tls") == "true"
        if flow.direction == "outbound":
            dst_ns, dst = _destination(flow.labels, kind)
            seen = outbound.setdefault((flow.namespace, flow.workload, dst_ns, dst), _Seen())
            seen.secured &= secured
            if secured and flow.labels.get("server_id"):
                seen.server_ids.add(flow.labels["server_id"])
        elif flow.direction == "inbound" and secured and flow.labels.get("client_id"):
            inbound.setdefault((flow.namespace, flow.workload), set()).add(flow.labels["client_id"])
    edges: list[Edge] = []
    used: set[tuple[str, str, str]] = set()
    for (src_ns, src, dst_ns, dst), seen in sorted(outbound.items()):
        client_id = _client_of(src_ns, src, inbound.get((dst_ns, dst), set()))
        if client_id:
            used.add((dst_ns, dst, client_id))
        edges.append(
            Edge(
                src, dst, src_ns, dst_ns, seen.secured, client_id, ",".join(sorted(seen.server_ids))
            )
        )
    for (dst_ns, dst), client_ids in sorted(inbound.items()):
        for client_id in sorted(client_ids):
            if (dst_ns, dst, client_id) in used:
                continue
            serviceaccount, src_ns = parse_identity(client_id) or (client_id, "")
            edges.append(Edge(serviceaccount, dst, src_ns, dst_ns, True, client_id, ""))
    return edges


def _client_of(src_ns: str, src: str, client_ids: set[str]) -> str:
    candidates = sorted(i for i in client_ids if (parse_identity(i) or ("", ""))[1] == src_ns)
    named = [i for i in candidates if (parse_identity(i) or ("", ""))[0] == src]
    if named:
        return named[0]
    return candidates[0] if len(candidates) == 1 else ""


def _carries_edge(name: str, labels: dict[str, str]) -> bool:
    """HTTP responses always; TCP connections only when they name a meshed peer (else every
    HTTP connection would show up a second time, as a bare IP address)."""
    if name == "response_total":
        return True
    return name == "tcp_open_total" and bool(labels.get("dst_namespace") or labels.get("client_id"))


def edge_line(line: str) -> bool:
    """The sample lines ``flows_from_pods`` reads (not the latency buckets, most of a page)."""
    return line.startswith(("response_total{", "tcp_open_total{"))


def flows_from_pods(pods: Sequence[PodWindow]) -> list[Flow]:
    flows = []
    for pod in pods:
        for (name, labels), value in pod.deltas.items():
            found = dict(labels)
            if (
                value > 0
                and _carries_edge(name, found)
                and found.get("direction") in {"inbound", "outbound"}
            ):
                flows.append(Flow(pod.namespace, pod.workload, found["direction"], found))
    return flows


def edge_queries(kind: str, window: str, namespace: str = "") -> dict[str, str]:
    where = f',namespace="{namespace}"' if namespace else ""
    out = f"namespace, {kind}, dst_namespace, dst_{kind}, dst_service, tls, server_id"
    into = f"namespace, {kind}, client_id, tls"
    return {
        "outbound": f'sum(increase(response_total{{direction="outbound"{where}}}[{window}])) '
        f"by ({out}, authority)",
        "outbound_tcp": f'sum(increase(tcp_open_total{{direction="outbound",dst_namespace!=""'
        f"{where}}}[{window}])) by ({out})",
        "inbound": f'sum(increase(response_total{{direction="inbound"{where}}}[{window}])) '
        f"by ({into})",
        "inbound_tcp": f'sum(increase(tcp_open_total{{direction="inbound",client_id!=""{where}}}'
        f"[{window}])) by ({into})",
    }


def flows_from_prometheus(kind: str, answers: dict[str, Vector]) -> list[Flow]:
    flows = []
    for key, vector in answers.items():
        direction = key.partition("_")[0]
        for labels, value in vector:
            if value > 0 and labels.get(kind):
                flows.append(Flow(labels.get("namespace", ""), labels[kind], direction, labels))
    return flows


def format_edges(edges: Sequence[Edge]) -> str:
    header = ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "CLIENT_ID", "SERVER_ID"]
    table = [header] + [
        [
            e.src,
            e.dst,
            e.src_ns or "-",
            e.dst_ns or "-",
            "√" if e.secured else "×",  # noqa: RUF001 (Linkerd's marks)
            e.client_id or "-",
            e.server_id or "-",
        ]
        for e in edges
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def edges_json(edges: Sequence[Edge]) -> list[dict[str, Any]]:
    return [
        {
            "src": e.src,
            "dst": e.dst,
            "src_namespace": e.src_ns,
            "dst_namespace": e.dst_ns,
            "secured": e.secured,
            "client_id": e.client_id,
            "server_id": e.server_id,
        }
        for e in edges
    ]


def _collect(source: Source) -> list[Edge]:
    if source.prometheus is not None:
        queries = edge_queries(source.kind, window_text(source.window), source.namespace)
        answers = {key: source.prometheus.query(promql) for key, promql in queries.items()}
        return edges_from_flows(flows_from_prometheus(source.kind, answers), source.kind)
    edges = edges_from_flows(flows_from_pods(source.scrape(keep=edge_line)), source.kind)
    wanted = source.namespace
    return [e for e in edges if not wanted or wanted in {e.src_ns, e.dst_ns}]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="meshlet edges",
        description="Who talks to whom, with the mTLS identities each side proved, "
        "from proxies' admin ports or from Prometheus, like 'linkerd viz edges'.",
    )
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    try:
        edges = _collect(resolve_source(args))
    except OptionError as error:
        print(f"meshlet edges: {error}", file=sys.stderr)
        return 2
    except SourceError as error:
        print(f"meshlet edges: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.output == "json":
        print(json.dumps(edges_json(edges), indent=2))
    elif not edges:
        print("No edges found.", file=sys.stderr)
    else:
        print(format_edges(edges))
    return 0
