"""The demo as a user runs it (root): shortened, its JSON summary checked, nothing left after,
Ctrl-C mid-run included; and the clear refusal without root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from meshlet.names import workload_identity
from tests.demo.demo_process import DEMO, DemoRun

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def demo() -> Iterator[list[DemoRun]]:
    runs: list[DemoRun] = []
    try:
        yield runs
    finally:
        for run in runs:
            run.sweep()


def _identity(name: str) -> str:
    return workload_identity(name, "demo")


def test_the_demo_shows_every_workload_meshed_with_mtls_and_leaves_nothing(
    demo: list[DemoRun],
) -> None:
    run = DemoRun.start("--duration", "15", "-o", "json")
    demo.append(run)
    run.wait_for_traffic()
    assert len(run.namespaces) == 5  # node + four pods
    out, err = run.finish()
    assert run.process.returncode == 0, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["ok"] is True, summary["checks"]
    rows = {row["name"]: row for row in summary["stat"]}
    assert set(rows) == {"web", "books", "authors", "loadgen"}
    for name in ("web", "books", "authors"):
        assert rows[name]["namespace"] == "demo"
        assert rows[name]["meshed"] == "1/1"
        assert rows[name]["rps"] > 1
        assert rows[name]["success"] == 1.0
        assert rows[name]["latency_ms_p50"] is not None
    assert rows["loadgen"]["meshed"] == "1/1"
    assert summary["load"]["ok"] > 50
    assert summary["load"]["failed"] == 0
    edges = {(e["src"], e["dst"]): e for e in summary["edges"]}
    assert set(edges) == {("loadgen", "web"), ("web", "books"), ("web", "authors")}
    for (src, dst), edge in edges.items():
        assert edge["secured"] is True
        assert edge["client_id"] == _identity(src)
        assert edge["server_id"] == _identity(dst)
    assert run.leftovers() == []


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_mid_run_stops_everything_and_removes_everything(
    demo: list[DemoRun], signum: signal.Signals, status: int
) -> None:
    run = DemoRun.start("--duration", "60")
    demo.append(run)
    run.wait_for_traffic()
    assert run.namespaces
    run.process.send_signal(signum)
    _, err = run.finish(timeout=90)
    assert run.process.returncode == status, err
    assert "interrupted; cleaning up" in err
    assert "Traceback" not in err
    assert run.leftovers() == []


def test_without_root_it_says_why_and_what_to_run_instead() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(
        [*nobody, *DEMO], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "HOME": "/nonexistent"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "needs root" in done.stderr
    assert "meshlet demo --injector-only" in done.stderr
    assert "sudo" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
