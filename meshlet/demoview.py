"""What ``meshlet demo`` shows: the progress line, the checks and the final summary. Pure:
numbers, rows and edges in, text and verdicts out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshlet.edges import Edge, edges_json, format_edges
from meshlet.stat import StatRow, format_table, rows_json

__all__ = [
    "Check",
    "ExpectedEdge",
    "LoadCounts",
    "check_edges",
    "check_load",
    "check_rows",
    "progress_line",
    "summary_json",
    "summary_text",
]


@dataclass(frozen=True, slots=True)
class LoadCounts:
    """The load generator's totals."""

    ok: int = 0
    failed: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ExpectedEdge:
    src: str
    dst: str
    client_id: str  # the identity src's proxy must prove
    server_id: str  # the identity dst's proxy must prove


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict of the demo, with the reason in words."""

    what: str
    ok: bool
    reason: str


def progress_line(elapsed: float, duration: float, counts: LoadCounts, width: int = 30) -> str:
    done = min(1.0, max(0.0, elapsed / duration)) if duration > 0 else 1.0
    filled = round(done * width)
    bar = "#" * filled + "." * (width - filled)
    requests = counts.ok + counts.failed
    rate = requests / elapsed if elapsed > 0 else 0.0
    return (
        f"[{bar}] {min(elapsed, duration):4.0f}s/{duration:g}s  {requests} requests "
        f"({rate:.1f}/s): {counts.ok} ok, {counts.failed} failed"
    )


def check_rows(
    rows: Sequence[StatRow], served: Sequence[str], meshed: Sequence[str]
) -> list[Check]:
    """Every workload in ``meshed`` has its proxy; every one in ``served`` served traffic, all
    of it successfully."""
    by_name = {row.name: row for row in rows}
    checks = []
    for name in meshed:
        row = by_name.get(name)
        ok = row is not None and row.meshed == row.pods >= 1
        reason = "its proxy was scraped" if ok else "no proxy answered for it"
        checks.append(Check(f"{name} is meshed", ok, reason))
    for name in served:
        row = by_name.get(name)
        if row is None or row.rps is None or row.success is None:
            checks.append(Check(f"{name} served traffic", False, "no requests in the window"))
            continue
        checks.append(Check(f"{name} served traffic", row.rps > 0, f"{row.rps:.1f} rps"))
        checks.append(
            Check(
                f"{name} success rate 100%",
                row.success == 1.0,
                f"{row.success * 100:.2f}% of the requests it served succeeded",
            )
        )
    return checks


def check_load(counts: LoadCounts) -> Check:
    """The load generator's own view: it sent requests and every one got a 200."""
    total = counts.ok + counts.failed
    if total == 0:
        return Check("loadgen's requests succeeded", False, "it sent no request")
    reason = f"{counts.ok} of {total} answered 200"
    return Check("loadgen's requests succeeded", counts.failed == 0, reason)


def check_edges(edges: Sequence[Edge], expected: Sequence[ExpectedEdge]) -> list[Check]:
    """Each expected edge was seen, secured (mTLS), with both identities as expected."""
    checks = []
    for want in expected:
        what = f"{want.src} -> {want.dst} is mTLS"
        found = [e for e in edges if (e.src, e.dst) == (want.src, want.dst)]
        if not found:
            checks.append(Check(what, False, "no traffic seen on this edge"))
            continue
        edge = found[0]
        if not edge.secured:
            checks.append(Check(what, False, "some of its traffic was not mTLS"))
        elif edge.client_id != want.client_id:
            checks.append(Check(what, False, f"client proved {edge.client_id or 'nothing'}"))
        elif edge.server_id != want.server_id:
            checks.append(Check(what, False, f"server proved {edge.server_id or 'nothing'}"))
        else:
            checks.append(Check(what, True, f"{edge.client_id} -> {edge.server_id}"))
    return checks


def summary_text(
    seconds: float,
    counts: LoadCounts,
    rows: Sequence[StatRow],
    edges: Sequence[Edge],
    checks: Sequence[Check],
) -> str:
    lines = [
        f"Golden metrics per workload over the {seconds:.0f}s of traffic (meshlet stat):",
        "",
        format_table(rows),
        "",
        "Who talked to whom, and the identities each side proved (meshlet edges):",
        "",
        format_edges(edges) if edges else "(no edges)",
        "",
        f"Load generator: {counts.ok + counts.failed} requests, {counts.ok} ok, "
        f"{counts.failed} failed" + (f" (last error: {counts.error})" if counts.error else ""),
        "",
        "Checks:",
    ]
    lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.what}: {c.reason}" for c in checks]
    return "\n".join(lines)


def summary_json(
    seconds: float,
    counts: LoadCounts,
    rows: Sequence[StatRow],
    edges: Sequence[Edge],
    checks: Sequence[Check],
) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "load": {"ok": counts.ok, "failed": counts.failed, "last_error": counts.error},
        "stat": rows_json(rows),
        "edges": edges_json(edges),
        "checks": [{"what": c.what, "ok": c.ok, "reason": c.reason} for c in checks],
        "ok": all(c.ok for c in checks),
    }
