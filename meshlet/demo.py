"""``meshlet demo``: the mesh at work on one machine, no cluster.

As root, it builds a node of network namespaces (``meshlet.localmesh``), starts
meshlet-identity and meshlet-destination in local mode and meshlet-webhook, deploys the bookshop
(``meshlet.localmesh.bookshop``: every pod injected by the running webhook, proxy-init's rules,
meshlet-proxy as UID 2102), drives traffic for ``--duration`` seconds with a progress line, and
ends with the golden metrics per workload (``meshlet stat``'s rows) and every edge with the
identities both sides proved (``meshlet edges``), then checks them. Everything it started is
stopped and every namespace and temporary file removed on the way out, on Ctrl-C and SIGTERM
too. ``--injector-only`` is the injector's dry run, which needs no root
(``meshlet.demo_injector``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Final, TypeVar

from meshlet import demo_injector
from meshlet.demoview import (
    ExpectedEdge,
    LoadCounts,
    check_edges,
    check_load,
    check_rows,
    progress_line,
    summary_json,
    summary_text,
)
from meshlet.edges import edge_line, edges_from_flows, flows_from_pods
from meshlet.localmesh.bookshop import APP_UID, EDGES, NAMESPACE, WORKLOADS, Bookshop
from meshlet.localmesh.meshnode import MeshNode
from meshlet.localmesh.netns import LocalMeshError, Netns, Process, run
from meshlet.localmesh.node import Node
from meshlet.localmesh.programs import let_users_reach_interpreter, unreachable_for
from meshlet.localmesh.webhookclient import LocalWebhook
from meshlet.metricsource import AdminTarget, SourceError, pod_windows, scrape_all
from meshlet.metricsread import Scrape
from meshlet.names import PROXY_UID
from meshlet.stat import rows_from_pods, stat_line

__all__ = ["main", "root_problem"]

TOOLS: Final = ("ip", "iptables", "setpriv", "sysctl")
_PROXY_VARS: Final = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy")
_SCRAPE_TIMEOUT: Final = 5.0
_T = TypeVar("_T")


class _Stopped(Exception):
    """SIGTERM: unwind and clean up like Ctrl-C."""


def root_problem(euid: int, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """Why the full demo cannot run here, in words, with what to run instead; None if it can."""
    if euid != 0:
        return (
            "the demo builds network namespaces and iptables rules, which needs root.\n"
            "  Run it as root:          sudo python3 -m tox -e demo   (or sudo meshlet demo)\n"
            "  Or, without root, the injector's dry run only:  meshlet demo --injector-only"
        )
    missing = [tool for tool in TOOLS if which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not found; install them with ./scripts/bootstrap "
            "(apt-get install iproute2 iptables util-linux procps)"
        )
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlet demo",
        description="Run a meshed application on this machine (network namespaces, no cluster; "
        "needs root) and show its golden metrics and mTLS edges.",
    )
    parser.add_argument(
        "--duration", type=int, default=30, metavar="SECONDS",
        help="seconds of traffic (5..600, default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--rps", type=float, default=20.0, help="requests per second the load generator sends "
        "to the front end (1..200, default 20)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default="table",
        help="the final summary as a table (default) or JSON (progress goes to stderr)",
    )  # fmt: skip
    parser.add_argument(
        "--injector-only", action="store_true",
        help="only the injector's dry run (no root needed): its decision and patch for two pods",
    )  # fmt: skip
    return parser


def _in_namespace(netns: Netns, work: Callable[[], _T]) -> _T:
    """``work()`` on a thread that lives in ``netns`` (plain clients reach the pods' IPs)."""
    result: list[_T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            netns.enter_thread()
            result.append(work())
        except BaseException as error:  # handed to the caller
            errors.append(error)

    thread = threading.Thread(target=run, name="scrape", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class _LoadWatch:
    """Reads the load generator's progress lines as they come."""

    def __init__(self, process: Process) -> None:
        self.counts = LoadCounts()
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stdout = self._process.popen.stdout
        assert stdout is not None
        for line in stdout:
            try:
                decoded = json.loads(line)
                self.counts = LoadCounts(decoded["ok"], decoded["failed"], decoded["error"])
            except (ValueError, KeyError, TypeError):
                continue


class _Demo:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.node: Node | None = None
        self.mesh: MeshNode | None = None
        self.webhook: LocalWebhook | None = None
        self.tty = sys.stderr.isatty()

    def say(self, text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    def run(self) -> bool:
        logs = self.workdir / "logs"
        logs.mkdir()
        print(f"meshlet demo: work directory {self.workdir} (removed on exit)", file=sys.stderr)
        self.node = node = Node()
        self.say(f"node namespace {node.netns.name}: bridge br0 10.244.0.1/24, Service DNAT")
        self.mesh = mesh = MeshNode(node, logs, parent=self.workdir)
        self.say("meshlet-identity (local mode: token file) on 10.244.0.1:8080")
        self.say("meshlet-destination (local mode: services YAML) on 10.244.0.1:8086")
        cluster = self.workdir / "cluster.yaml"
        cluster.write_text(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n"
            f"  name: {NAMESPACE}\n  labels:\n    meshlet.io/inject: enabled\n"
        )
        self.webhook = webhook = LocalWebhook(self.workdir, cluster, mesh.pki / "ca-bundle.crt")
        webhook.start()
        mesh.injector = webhook.inject
        self.say(f"meshlet-webhook on {webhook.url}: every pod below is its AdmissionReview answer")
        shop = Bookshop(mesh)
        shop.deploy(self.say)
        return self._traffic(shop)

    def _traffic(self, shop: Bookshop) -> bool:
        assert self.node is not None
        duration = float(self.args.duration)
        targets = shop.admin_targets()
        node_ns = self.node.netns
        first = _in_namespace(node_ns, lambda: _scrape(targets))
        started = time.monotonic()
        load = shop.start_load(self.args.rps, duration + 60)
        watch = _LoadWatch(load)
        print(
            f"meshlet demo: {self.args.rps:g} requests/s from loadgen to web for {duration:g}s",
            file=sys.stderr,
        )
        last_line = 0.0
        while (elapsed := time.monotonic() - started) < duration:
            time.sleep(min(1.0, duration - elapsed))
            elapsed = time.monotonic() - started
            line = progress_line(elapsed, duration, watch.counts)
            if self.tty:
                print(f"\r{line}", end="", file=sys.stderr, flush=True)
            elif elapsed - last_line >= 5 or elapsed >= duration:
                print(line, file=sys.stderr, flush=True)
                last_line = elapsed
        if self.tty:
            print(file=sys.stderr)
        second = _in_namespace(node_ns, lambda: _scrape(targets))
        load.stop()
        counts = watch.counts
        pods = pod_windows(targets, first, second)
        rows = rows_from_pods(pods)
        edges = edges_from_flows(flows_from_pods(pods))
        served = [w.name for w in WORKLOADS if w.service_port is not None]
        expected = [ExpectedEdge(src, dst, _identity(src), _identity(dst)) for src, dst in EDGES]
        checks = check_rows(rows, served, [w.name for w in WORKLOADS])
        checks += [check_load(counts), *check_edges(edges, expected)]
        seconds = time.monotonic() - started
        if self.args.output == "json":
            print(json.dumps(summary_json(seconds, counts, rows, edges, checks), indent=2))
        else:
            print(summary_text(seconds, counts, rows, edges, checks))
        return all(check.ok for check in checks)

    def close(self) -> None:
        """Stop everything, remove every namespace and the work directory; report, go on."""
        problems = []
        if self.webhook is not None:
            self.webhook.stop()
        if self.node is not None:
            for pod in self.node.pods.values():  # all at once: each may take its grace period
                for process in pod.processes:
                    if process.popen.poll() is None:
                        process.popen.terminate()
            try:
                self.node.close()
            except LocalMeshError as error:
                problems.append(str(error))
        if self.mesh is not None:
            self.mesh.close()
        problems += [f"namespace {name} was left over: deleted" for name in _sweep_namespaces()]
        shutil.rmtree(self.workdir, ignore_errors=True)
        for problem in problems:
            print(f"meshlet demo: cleaning up: {problem}", file=sys.stderr)


def _identity(workload: str) -> str:
    return next(w.identity for w in WORKLOADS if w.name == workload)


def _scrape(targets: list[AdminTarget]) -> list[tuple[float, Scrape]]:
    return scrape_all(targets, _SCRAPE_TIMEOUT, lambda line: stat_line(line) or edge_line(line))


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def _sweep_namespaces() -> list[str]:
    """Delete any namespace of this process left over (one interrupted while being made)."""
    mine = f"mlt-{os.getpid()}-"
    try:
        listed = run(["ip", "netns", "list"])
    except LocalMeshError:
        return []
    left = [line.split()[0] for line in listed.splitlines() if line.startswith(mine)]
    for name in left:
        try:
            run(["ip", "netns", "del", name])
        except LocalMeshError:
            continue
    return left


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.injector_only:
        return demo_injector.main([])
    if not 5 <= args.duration <= 600:
        print("meshlet demo: --duration must be between 5 and 600 seconds", file=sys.stderr)
        return 2
    if not 1 <= args.rps <= 200:
        print("meshlet demo: --rps must be between 1 and 200", file=sys.stderr)
        return 2
    problem = root_problem(os.geteuid())
    if problem is not None:
        print(f"meshlet demo: {problem}", file=sys.stderr)
        return 2
    let_users_reach_interpreter()
    for uid in (PROXY_UID, APP_UID):
        if (why := unreachable_for(uid)) is not None:
            print(
                f"meshlet demo: the pods' users cannot run meshlet's programs: {why}\n"
                "  (install meshlet where every user can read it, e.g. a virtual environment "
                "outside /root)",
                file=sys.stderr,
            )
            return 2
    for name in [*_PROXY_VARS, *(v.upper() for v in _PROXY_VARS)]:
        os.environ.pop(name, None)  # the scrapes go to the pods, never through a proxy
    workdir = Path(tempfile.mkdtemp(prefix="meshlet-demo-"))
    workdir.chmod(0o711)  # the proxies (UID 2102) read their identity files below it
    demo = _Demo(args, workdir)
    status = 1
    # SIGTERM unwinds like Ctrl-C; both are ignored while cleaning up, so a second Ctrl-C
    # cannot leave namespaces or processes behind.
    signal.signal(signal.SIGTERM, _stopped)
    try:
        status = 0 if demo.run() else 1
    except KeyboardInterrupt:
        status = 130
    except _Stopped:
        status = 143
    except (LocalMeshError, SourceError, OSError) as error:
        print(f"\nmeshlet demo: error: {error}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if status in {130, 143}:
            print("\nmeshlet demo: interrupted; cleaning up", file=sys.stderr)
        demo.close()
    print("meshlet demo: stopped everything it started and removed its namespaces and files",
          file=sys.stderr)  # fmt: skip
    return status
