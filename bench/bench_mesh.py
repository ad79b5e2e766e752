"""The full meshed path vs the direct path, in network namespaces (root): ``python -m bench mesh``.

Built with the mesh e2e harness (``tests/harness/mesh_node.py``): meshlet-identity and
meshlet-destination in local mode in a node namespace, and four pods:

- ``meshed``: h2load -> client pod's meshlet-proxy (outbound) -> mTLS -> server pod's
  meshlet-proxy (inbound) -> nginx in the server pod; the Service VIP is in discovery, so the
  client proxy picks the endpoint and dials it with the server's identity;
- ``direct``: h2load in an unmeshed pod -> nginx in an unmeshed pod (same bridge, no proxies);
- ``trio-tls``: the direct pods again, through a pair of minimal Trio forwarders
  (``bench/trio_forwarder.py``), one in each pod, with mutual TLS 1.3 between them: what two
  hops written on Trio with TLS cost with no HTTP work, discovery or balancing at all;
- ``upgrade`` (HTTP/1.1): the meshed path again with the client proxy restarted with
  ``MESHLET_PROXY_OUTBOUND_HTTP1_UPGRADE=true`` (HTTP/1 requests as streams on a shared HTTP/2
  connection between the proxies instead of HTTP/1 end to end), burst and evenly spaced;
- ``per-conn`` (h2c, last): the meshed path again with the client proxy restarted with
  ``MESHLET_PROXY_OUTBOUND_HTTP2_PER_STREAM=false`` (one endpoint per connection, frames relayed
  as on the inbound side), the same-run reference for the cost of per-stream routing.

Per protocol (HTTP/1.1 and h2c, prior knowledge) and path: p50/p99 latency (h2load's per-request
log) and each proxy's CPU (cores, /proc utime+stime over the run) and RSS at a fixed 1,000
requests/s over 10 connections, then the requests/s at saturation (10 connections, 10 streams
each for h2c). Then the same fixed rate evenly spaced (rows ``direct~``/``meshed~``,
``bench/spaced_load.py``): 10 h2load processes in the client pod, one connection each at 100
requests/s, their timers staggered 1 ms apart and the spacing achieved measured from their logs;
the burst rows (one h2load firing its 10 connections together every 10 ms) stay as the worst
case. Medians of ``--runs`` runs (3). ``--quick``: 3 s per fixed-rate run.

The harness lives under ``tests/``: run from the repository root, as root.
"""

from __future__ import annotations

import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench import h2load_logs, spaced_load
from bench.bench_mesh_tls import DB, WEB, bench_issuer, write_leaf
from bench.procstat import cpu_seconds as _cpu_seconds
from bench.procstat import rss_mb as _rss_mb
from meshlet.localmesh.netns import clean_env


@dataclass
class Sample:
    p50_ms: float
    p99_ms: float
    cores: tuple[float, ...]
    rss_mb: tuple[float, ...]
    achieved: float  # requests/s actually sent (below 1,000 when the path cannot keep up)


def _h2load(pod: Any, args: list[str]) -> str:
    done = pod.run_result(["h2load", *args], timeout=300)
    return h2load_logs.h2load_summary(done.stdout, done.stderr)


def _fixed_rate(
    pod: Any, url: str, h1: bool, *, seconds: int, pids: list[int], log: Path
) -> Sample:
    args = ["--log-file", str(log), "-n", str(1000 * seconds), "-c", "10", "--rps", "100"]
    args += ["--h1"] if h1 else ["-m", "1"]
    before = [_cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    _h2load(pod, [*args, url])
    elapsed = time.monotonic() - started
    cores = tuple((_cpu_seconds(pid) - b) / elapsed for pid, b in zip(pids, before, strict=True))
    entries = h2load_logs.parse_log(log.read_text())
    p50, p99 = h2load_logs.latency_ms(entries)
    rss = tuple(_rss_mb(pid) for pid in pids)
    return Sample(p50, p99, cores, rss, len(entries) / elapsed)


def _saturation(pod: Any, url: str, h1: bool, requests: int) -> float:
    args = ["-n", str(requests), "-c", "10", *(["--h1"] if h1 else ["-m", "10"])]
    output = _h2load(pod, [*args, url])
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output)
    if match is None:
        raise RuntimeError(output)
    return float(match.group(1))


def _nginx(member: Any, directory: Path) -> None:
    """nginx in ``member``'s pod answering ``hello`` over HTTP/1.1 on 8080 and h2c on 8081
    (the tests' configuration, ``tests/harness/nginx.py``)."""
    nginx = importlib.import_module("tests.harness.nginx")
    directory.mkdir()
    hello = '"hello\\n"'
    servers = nginx.answer_server("8080", hello) + nginx.answer_server("8081 http2", hello)
    conf = nginx.write_nginx_config(directory, servers, keepalive_requests=100_000_000)
    nginx.start_h2c_nginx(member.pod, conf)  # waits for 8081 (nginx.H2C_PORT)
    member.pod.wait_for_port(("127.0.0.1", 8080))


_FORWARDED = {8080: 9080, 8081: 9081}  # nginx's port -> the Trio forwarders' port (both pods)


def _trio_tls_pair(client: Any, server: Any, directory: Path) -> list[int]:
    """``bench/trio_forwarder.py`` in the unmeshed ``client`` pod (plaintext in, mutual TLS
    out) and in the unmeshed ``server`` pod (mutual TLS in, plaintext to its nginx), with
    certificates from a bench issuer; returns their PIDs (client side first)."""
    directory.mkdir()
    issuer, anchors = bench_issuer()
    ca = directory / "ca.pem"
    ca.write_text(anchors)
    server_files = [str(f) for f in (*write_leaf(directory, issuer, DB), ca)]
    client_files = [str(f) for f in (*write_leaf(directory, issuer, WEB), ca)]
    script = str(Path(__file__).with_name("trio_forwarder.py"))
    inner = [f"0.0.0.0:{port}=127.0.0.1:{app}" for app, port in _FORWARDED.items()]
    outer = [f"127.0.0.1:{port}={server.pod.ip}:{port}" for port in _FORWARDED.values()]
    accepting = server.pod.spawn(
        [sys.executable, script, "--accept-tls", *server_files, *inner],
        capture=False,
        label="trio forwarder (mutual TLS in)",
    )
    for port in _FORWARDED.values():
        server.pod.wait_for_port(("127.0.0.1", port))
    connecting = client.pod.spawn(
        [sys.executable, script, "--connect-tls", *client_files, DB, *outer],
        capture=False,
        label="trio forwarder (mutual TLS out)",
    )
    for port in _FORWARDED.values():
        client.pod.wait_for_port(("127.0.0.1", port))
    return [connecting.pid, accepting.pid]


def run(args: list[str]) -> None:
    if os.geteuid() != 0:
        print("bench mesh needs root (network namespaces, iptables): skipped")
        return
    quick = "--quick" in args
    runs = next((int(a.split("=", 1)[1]) for a in args if a.startswith("--runs=")), 3)
    seconds = 3 if quick else 10
    saturation_requests = 5_000 if quick else 20_000
    mesh_harness = importlib.import_module("tests.harness.mesh_node")
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp:
        root = Path(tmp)
        with mesh_harness.open_mesh_node(root) as mesh_node:
            client = mesh_node.add_pod("client", serviceaccount="client", ports=())
            server = mesh_node.add_pod("server", serviceaccount="web", ports=(8080, 8081))
            plain_client = mesh_node.add_pod("plain-client", meshed=False)
            plain_server = mesh_node.add_pod("plain-server", meshed=False)
            _nginx(server, root / "nginx-meshed")
            _nginx(plain_server, root / "nginx-direct")
            forwarders = _trio_tls_pair(plain_client, plain_server, root / "trio-tls")
            h1 = mesh_node.add_service("web", 80, [server], target_port=8080)
            h2 = mesh_node.add_service("web-h2", 81, [server], target_port=8081)
            mesh_node.wait_ready([client, server])
            mesh_node.wait_discovered()
            pids = [client.proxy.pid, server.proxy.pid]
            paths = {
                "direct": (plain_client.pod, f"http://{plain_server.pod.ip}:8080/",
                           f"http://{plain_server.pod.ip}:8081/", []),
                "trio-tls": (plain_client.pod, f"http://127.0.0.1:{_FORWARDED[8080]}/",
                             f"http://127.0.0.1:{_FORWARDED[8081]}/", forwarders),
                "meshed": (client.pod, f"http://{h1.service.vip}:80/",
                           f"http://{h2.service.vip}:81/", pids),
            }  # fmt: skip
            # Warm-up: discovery subscriptions, certificates, connection pools.
            for pod, url_h1, url_h2, _ in paths.values():
                _h2load(pod, ["-n", "200", "-c", "2", "--h1", url_h1])
                _h2load(pod, ["-n", "200", "-c", "2", url_h2])
            # The meshed path really is mTLS with the client's identity (the warm-up's 400).
            page = importlib.import_module("tests.harness.mesh").scrape(server.pod)
            meshed = {"direction": "inbound", "tls": "true", "client_id": client.identity}
            print(f"warm-up requests the server proxy took over mTLS from the client: "
                  f"{page.total('request_total', **meshed):.0f}")  # fmt: skip
            _report(paths, runs=runs, seconds=seconds, requests=saturation_requests, root=root)
            # HTTP/1.1 once more with the client proxy upgrading to HTTP/2 between the proxies.
            _restart_client(mesh_node, client, "MESHLET_PROXY_OUTBOUND_HTTP1_UPGRADE", True)
            pod, url_h1, url_h2, _ = paths["meshed"]
            _h2load(pod, ["-n", "200", "-c", "2", "--h1", url_h1])  # warm-up
            pids = [client.proxy.pid, server.proxy.pid]
            print("client proxy with MESHLET_PROXY_OUTBOUND_HTTP1_UPGRADE=true:")
            _row("upgrade", pod, url_h1, True, pids, runs=runs, seconds=seconds,
                 requests=saturation_requests, root=root)  # fmt: skip
            spaced = [
                _spaced(pod, url_h1, True, pids, seconds=seconds, root=root / f"spaced-upgrade-{i}")
                for i in range(runs)
            ]
            spaced_load.print_table("http/1.1", {"upgrade": spaced})
            # h2c once more with the client proxy in per-connection mode (frame relay).
            _restart_client(mesh_node, client, "MESHLET_PROXY_OUTBOUND_HTTP2_PER_STREAM", False)
            _h2load(pod, ["-n", "200", "-c", "2", url_h2])  # warm-up
            pids = [client.proxy.pid, server.proxy.pid]
            print("client proxy with MESHLET_PROXY_OUTBOUND_HTTP2_PER_STREAM=false:")
            _row("per-conn", pod, url_h2, False, pids, runs=runs, seconds=seconds,
                 requests=saturation_requests, root=root)  # fmt: skip


def _report(
    paths: dict[str, tuple[Any, str, str, list[int]]],
    *,
    runs: int,
    seconds: int,
    requests: int,
    root: Path,
) -> None:
    print(f"machine: {os.cpu_count()} cores, python{sys.version_info[0]}.{sys.version_info[1]}")
    print(f"fixed rate: 1,000 req/s over 10 connections for {seconds}s; medians of {runs} runs")
    print("cores/RSS: client proxy / server proxy (trio-tls: client / server forwarder)")
    print(
        f"{'protocol':8} {'path':8} {'p50 ms':>7} {'p99 ms':>7} {'cores':>13} "
        f"{'RSS MB':>11} {'sent req/s':>10} {'max req/s':>10}"
    )
    for h1 in (True, False):
        p99s = {}
        spaced = {}
        for name, (pod, url_h1, url_h2, pids) in paths.items():
            url = url_h1 if h1 else url_h2
            p99s[name] = _row(
                name, pod, url, h1, pids, runs=runs, seconds=seconds, requests=requests, root=root
            )
            spaced[name] = [
                _spaced(pod, url, h1, pids, seconds=seconds, root=root / f"spaced-{name}-{h1}-{i}")
                for i in range(runs)
            ]
        print(f"  p99 added by the two hops: {_added(p99s)}")
        spaced_p99s = spaced_load.print_table("http/1.1" if h1 else "h2c", spaced)
        print(f"  p99 added by the two hops (evenly spaced): {_added(spaced_p99s)}")


def _added(p99s: dict[str, float]) -> str:
    direct = p99s["direct"]
    added = (f"{name} {p99 - direct:.2f} ms" for name, p99 in p99s.items() if name != "direct")
    return ", ".join(added)


def _spaced(
    pod: Any, url: str, h1: bool, pids: list[int], *, seconds: int, root: Path
) -> spaced_load.SpacedSample:
    """A spaced run from ``pod``: each h2load goes through ``ip netns exec`` (its PID is
    h2load's own: ``ip netns exec`` execs)."""

    def launch(argv: list[str], output: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            pod.exec_argv(argv), stdout=output, stderr=subprocess.STDOUT, env=clean_env()
        )

    return spaced_load.run_spaced(
        launch, url, h1, seconds=seconds, pids=pids, root=root, name=root.name
    )


def _row(
    name: str,
    pod: Any,
    url: str,
    h1: bool,
    pids: list[int],
    *,
    runs: int,
    seconds: int,
    requests: int,
    root: Path,
) -> float:
    """Measure and print one row; return its median p99 (ms)."""
    samples = [
        _fixed_rate(pod, url, h1, seconds=seconds, pids=pids, log=root / f"log-{name}-{h1}-{i}")
        for i in range(runs)
    ]
    rates = [_saturation(pod, url, h1, requests) for _ in range(runs)]
    cores = " / ".join(
        f"{statistics.median(s.cores[i] for s in samples):.3f}" for i in range(len(pids))
    )
    rss = " / ".join(
        f"{statistics.median(s.rss_mb[i] for s in samples):.1f}" for i in range(len(pids))
    )
    p99 = statistics.median(s.p99_ms for s in samples)
    print(
        f"{'http/1.1' if h1 else 'h2c':8} {name:8} "
        f"{statistics.median(s.p50_ms for s in samples):7.2f} {p99:7.2f} "
        f"{cores or '-':>13} {rss or '-':>11} "
        f"{statistics.median(s.achieved for s in samples):10.0f} "
        f"{statistics.median(rates):10.0f}",
        flush=True,
    )
    return p99


def _restart_client(mesh_node: Any, client: Any, switch: str, value: bool) -> None:
    """The client's proxy again, with ``switch`` (a boolean ``MESHLET_PROXY_*`` variable) set to
    ``value`` and the rest of its injected environment: the same-run comparison for what the
    switch changes."""
    client.proxy.stop()
    env = {**client.env, switch: str(value).lower()}
    client.proxy = client.pod.spawn(
        [importlib.import_module("tests.harness.mesh").PROXY],
        uid=importlib.import_module("meshlet.names").PROXY_UID,
        env=env,
        capture=False,
        label=f"meshlet-proxy in client ({switch}={str(value).lower()})",
    )
    mesh_node.wait_ready([client])
