"""The proxy's data plane under h2load: direct vs through meshlet-proxy vs through nginx.

``python -m bench proxy [--quick] [--runs=N] [--h1|--h2c]``. On loopback, in one run:

- a backend nginx (one worker) answers ``200 hello`` over h2c (prior knowledge) and HTTP/1.1;
- ``direct``: h2load against the backend;
- ``meshlet``: h2load against ``meshlet-proxy``'s inbound listener, run as its own process with
  every connection's original destination fixed to the backend (no iptables on loopback);
- ``nginx``: h2load against a second nginx (one worker) reverse-proxying to the backend with
  upstream keep-alive, the reference;
- ``trio-tcp``: a minimal Trio TCP forwarder (``bench/trio_forwarder.py``: one connection
  upstream per client connection, bytes copied both ways with trio's streams): what a proxy
  written on Trio pays with no HTTP work at all, on the same machine.

For each protocol (h2c, HTTP/1.1) and target: latency p50/p99 (from h2load's per-request log) and
the proxy's CPU (cores, from /proc utime+stime over the run) and RSS at a fixed 1,000 requests/s
over 10 connections, then the requests/s at saturation (10 connections, 10 streams each for h2c)
on one core: during saturation the proxy is pinned to CPU 1, h2load and the backend to CPU 0.
Then the same fixed rate evenly spaced (rows ``<target>~``, ``bench/spaced_load.py``): 10 h2load
processes of one connection each at 100 requests/s, their timers staggered 1 ms apart, with the
spacing achieved measured from their logs, and the p99 each proxy adds over ``direct~``. The
burst rows stay: one h2load fires its 10 connections together every 10 ms (the worst case).
Each figure is the median of ``--runs`` runs (default 3). Both nginx run with the tests'
configuration (``tests/harness/nginx.py``): run from the repository root.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import h2load_logs, spaced_load
from bench.procstat import cpu_seconds as _cpu_seconds
from bench.procstat import rss_mb as _rss_mb
from tests.harness import nginx

_HELLO = '"hello\\n"'  # nginx syntax
_REVERSE = """
    upstream backend {{ server 127.0.0.1:{backend_h1}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{h2c} http2;
        location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                     proxy_set_header Connection ""; }}
    }}
    server {{
        listen 127.0.0.1:{h1};
        location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                     proxy_set_header Connection ""; }}
    }}"""
_FORWARDER = Path(__file__).with_name("trio_forwarder.py")
_PROXY = """
import sys
from proxy.__main__ import main
target = ("127.0.0.1", int(sys.argv[1]))
sys.exit(main([], resolver=lambda _sock: target))
"""


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A port nothing listens on, never the same twice in one run (the kernel may hand a just
    closed probe's port out again)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)
        else:
            return


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@dataclass
class Target:
    name: str
    h2c: int
    h1: int
    pid: int | None  # the process whose CPU and memory are measured


@dataclass
class Sample:
    p50_ms: float
    p99_ms: float
    cores: float
    rss_mb: float


def _h2load(args: list[str], log: Path | None = None, cpu: int | None = None) -> str:
    argv = ["h2load", *args]
    if log is not None:
        argv[1:1] = ["--log-file", str(log)]
    if cpu is not None:
        argv[:0] = ["taskset", "-c", str(cpu)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return h2load_logs.h2load_summary(result.stdout, result.stderr)


def _fixed_rate(target: Target, h1: bool, seconds: int, log: Path) -> Sample:
    port = target.h1 if h1 else target.h2c
    rate_per_client = 100  # 10 connections x 100 = 1,000 requests/s
    args = ["-n", str(1000 * seconds), "-c", "10", "--rps", str(rate_per_client)]
    args += ["--h1"] if h1 else ["-m", "1"]
    before = _cpu_seconds(target.pid) if target.pid else 0.0
    started = time.monotonic()
    _h2load([*args, f"http://127.0.0.1:{port}/"], log)
    elapsed = time.monotonic() - started
    cores = (_cpu_seconds(target.pid) - before) / elapsed if target.pid else 0.0
    rss = _rss_mb(target.pid) if target.pid else 0.0
    p50, p99 = h2load_logs.latency_ms(h2load_logs.parse_log(log.read_text()))
    return Sample(p50, p99, cores, rss)


def _saturation(target: Target, h1: bool, requests: int, backend: list[int]) -> float:
    """Requests/s of 10 connections (10 streams each for h2c) as fast as the path answers, with
    the proxy alone on CPU 1 and h2load and the ``backend`` processes on CPU 0 (on a machine
    of at least 2 cores): the proxy's maximum on one core."""
    port = target.h1 if h1 else target.h2c
    args = ["-n", str(requests), "-c", "10"] + (["--h1"] if h1 else ["-m", "10"])
    everywhere = set(range(os.cpu_count() or 1))
    pinned = len(everywhere) >= 2
    if pinned:
        for pid in backend:
            os.sched_setaffinity(pid, {0})
        if target.pid:
            os.sched_setaffinity(target.pid, {1})
    try:
        output = _h2load([*args, f"http://127.0.0.1:{port}/"], cpu=0 if pinned else None)
    finally:
        for pid in [*backend, *([target.pid] if target.pid and pinned else [])]:
            os.sched_setaffinity(pid, everywhere)
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output)
    assert match, output
    return float(match.group(1))


def _start_nginx(directory: Path, servers: str) -> subprocess.Popen[bytes]:
    """nginx (one worker, the tests' configuration: ``tests/harness/nginx.py``) serving
    ``servers``, its files in ``directory``."""
    directory.mkdir()
    conf = nginx.write_nginx_config(directory, servers, keepalive_requests=100_000_000)
    return subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(directory), "-e", str(directory / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(args: list[str]) -> None:
    quick = "--quick" in args
    protocols: tuple[bool, ...] = (False, True)  # h2c, HTTP/1.1
    if "--h1" in args:
        protocols = (True,)
    elif "--h2c" in args:
        protocols = (False,)
    runs = next((int(a.split("=", 1)[1]) for a in args if a.startswith("--runs=")), 3)
    seconds = 3 if quick else 10
    saturation_requests = 10_000 if quick else 30_000
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        root = Path(tmp)
        try:
            back = {"h2c": _free_port(), "h1": _free_port()}
            hello = [f"127.0.0.1:{back['h2c']} http2", f"127.0.0.1:{back['h1']}"]
            backend = _start_nginx(
                root / "backend", "".join(nginx.answer_server(at, _HELLO) for at in hello)
            )
            processes.append(backend)
            _wait_port(back["h1"], backend)
            rp_ports = {"h2c": _free_port(), "h1": _free_port()}
            reverse = _start_nginx(
                root / "reverse", _REVERSE.format(backend_h1=back["h1"], **rp_ports)
            )
            processes.append(reverse)
            _wait_port(rp_ports["h1"], reverse)
            targets = [Target("direct", back["h2c"], back["h1"], None)]
            meshlet = {}
            for proto in ("h2c", "h1"):  # one proxy process per backend protocol
                inbound = _free_port()
                env = {
                    **os.environ,
                    "MESHLET_PROXY_INBOUND_LISTEN_ADDR": f"127.0.0.1:{inbound}",
                    "MESHLET_PROXY_OUTBOUND_LISTEN_ADDR": f"127.0.0.1:{_free_port()}",
                    "MESHLET_PROXY_ADMIN_LISTEN_ADDR": f"127.0.0.1:{_free_port()}",
                    "MESHLET_PROXY_TAP_LISTEN_ADDR": f"127.0.0.1:{_free_port()}",
                    "MESHLET_PROXY_LOG_LEVEL": "warn",
                }
                proxy = subprocess.Popen([sys.executable, "-c", _PROXY, str(back[proto])], env=env)
                processes.append(proxy)
                _wait_port(inbound, proxy)
                meshlet[proto] = (inbound, proxy.pid)
            fwd = {"h2c": _free_port(), "h1": _free_port()}
            pairs = [f"127.0.0.1:{fwd[p]}=127.0.0.1:{back[p]}" for p in ("h2c", "h1")]
            forwarder = subprocess.Popen([sys.executable, str(_FORWARDER), *pairs])
            processes.append(forwarder)
            _wait_port(fwd["h1"], forwarder)
            targets.append(Target("trio-tcp", fwd["h2c"], fwd["h1"], forwarder.pid))
            workers = _children(reverse.pid)
            targets.append(
                Target("meshlet", meshlet["h2c"][0], meshlet["h1"][0], meshlet["h2c"][1])
            )
            targets.append(
                Target("nginx", rp_ports["h2c"], rp_ports["h1"], workers[0] if workers else None)
            )
            _report(
                targets,
                meshlet["h1"][1],
                [backend.pid, *_children(backend.pid)],
                runs=runs,
                seconds=seconds,
                saturation_requests=saturation_requests,
                root=root,
                protocols=protocols,
            )
        finally:
            for process in reversed(processes):
                _stop(process)


def _report(
    targets: list[Target],
    meshlet_h1_pid: int,
    backend: list[int],
    *,
    runs: int,
    seconds: int,
    saturation_requests: int,
    root: Path,
    protocols: tuple[bool, ...],
) -> None:
    print(f"machine: {os.cpu_count()} cores, python{sys.version_info[0]}.{sys.version_info[1]}")
    print(f"fixed rate: 1,000 req/s over 10 connections for {seconds}s; medians of {runs} runs")
    print("max req/s: on one core (the proxy alone on CPU 1, h2load and the backend on CPU 0)")
    header = f"{'protocol':8} {'target':8} {'p50 ms':>7} {'p99 ms':>7} {'cores':>6} "
    print(header + f"{'RSS MB':>7} {'max req/s':>10}")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    for h1 in protocols:
        protocol = "http/1.1" if h1 else "h2c"
        spaced: dict[str, list[spaced_load.SpacedSample]] = {}
        for listed in targets:
            target = listed
            if listed.name == "meshlet" and h1:  # the proxy process forwarding to HTTP/1.1
                target = Target(listed.name, listed.h2c, listed.h1, meshlet_h1_pid)
            samples = [
                _fixed_rate(target, h1, seconds, root / f"log-{target.name}-{h1}-{index}")
                for index in range(runs)
            ]
            rates = [_saturation(target, h1, saturation_requests, backend) for _ in range(runs)]
            print(
                f"{protocol:8} {target.name:8} "
                f"{statistics.median(s.p50_ms for s in samples):7.2f} "
                f"{statistics.median(s.p99_ms for s in samples):7.2f} "
                f"{statistics.median(s.cores for s in samples):6.3f} "
                f"{statistics.median(s.rss_mb for s in samples):7.1f} "
                f"{statistics.median(rates):10.0f}",
                flush=True,
            )
            spaced[target.name] = [
                _spaced(target, h1, seconds, root / f"spaced-{target.name}-{h1}-{index}")
                for index in range(runs)
            ]
        _spaced_table(protocol, spaced)


def _spaced(target: Target, h1: bool, seconds: int, root: Path) -> spaced_load.SpacedSample:
    port = target.h1 if h1 else target.h2c
    return spaced_load.run_spaced(
        lambda argv, output: subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT),
        f"http://127.0.0.1:{port}/",
        h1,
        seconds=seconds,
        pids=[target.pid] if target.pid else [],
        root=root,
        name=target.name,
    )


def _spaced_table(protocol: str, spaced: dict[str, list[spaced_load.SpacedSample]]) -> None:
    p99s = spaced_load.print_table(protocol, spaced)
    added = {name: p99 - p99s["direct"] for name, p99 in p99s.items() if name != "direct"}
    print("  p99 added (evenly spaced): " + ", ".join(f"{n} {a:.2f} ms" for n, a in added.items()))
