"""The demo's pure parts: the root check, the progress line and the verdicts."""

from __future__ import annotations

from meshlet.demo import root_problem
from meshlet.demoview import (
    ExpectedEdge,
    LoadCounts,
    check_edges,
    check_load,
    check_rows,
    progress_line,
    summary_json,
)
from meshlet.edges import Edge
from meshlet.stat import StatRow

WANT = ExpectedEdge("web", "books", "web.demo.sa", "books.demo.sa")


def _row(name: str, success: float | None, rps: float | None, meshed: int = 1) -> StatRow:
    return StatRow("demo", name, meshed, 1, success, rps, (1.0, 2.0, 3.0), 0)


def _edge(secured: bool = True, client: str = "web.demo.sa", server: str = "books.demo.sa") -> Edge:
    return Edge("web", "books", "demo", "demo", secured, client, server)


def test_root_problem_names_root_and_the_alternatives() -> None:
    problem = root_problem(1000)
    assert problem is not None
    assert "needs root" in problem
    assert "--injector-only" in problem
    assert root_problem(0, which=lambda tool: f"/usr/bin/{tool}") is None
    missing = root_problem(0, which=lambda tool: None if tool == "setpriv" else "/bin/x")
    assert missing is not None
    assert missing.startswith("setpriv not found")


def test_progress_line_fills_with_time() -> None:
    line = progress_line(5, 10, LoadCounts(ok=99, failed=1), width=10)
    assert line.startswith("[#####.....]")
    assert "100 requests (20.0/s): 99 ok, 1 failed" in line
    assert progress_line(12, 10, LoadCounts(), width=4).startswith("[####]")


def test_rows_fail_without_traffic_or_with_failures() -> None:
    rows = [_row("web", 1.0, 5.0), _row("books", 0.99, 5.0), _row("authors", None, None)]
    verdicts = {c.what: c.ok for c in check_rows(rows, ["web", "books", "authors"], ["web"])}
    assert verdicts == {
        "web is meshed": True,
        "web served traffic": True,
        "web success rate 100%": True,
        "books served traffic": True,
        "books success rate 100%": False,
        "authors served traffic": False,
    }
    assert not check_rows([], [], ["loadgen"])[0].ok


def test_edges_need_mtls_and_both_expected_identities() -> None:
    assert check_edges([_edge()], [WANT])[0].ok
    assert check_edges([], [WANT])[0].reason == "no traffic seen on this edge"
    assert not check_edges([_edge(secured=False)], [WANT])[0].ok
    assert "client proved other" in check_edges([_edge(client="other")], [WANT])[0].reason
    assert "server proved nothing" in check_edges([_edge(server="")], [WANT])[0].reason


def test_summary_json_is_ok_only_when_every_check_is() -> None:
    good = check_edges([_edge()], [WANT])
    bad = check_edges([], [WANT])
    assert summary_json(1.0, LoadCounts(), [], [_edge()], good)["ok"] is True
    assert summary_json(1.0, LoadCounts(), [], [], good + bad)["ok"] is False


def test_the_load_check_needs_requests_and_no_failure() -> None:
    assert check_load(LoadCounts(ok=10)).ok
    assert not check_load(LoadCounts(ok=10, failed=1, error="502")).ok
    assert check_load(LoadCounts()).reason == "it sent no request"
