"""meshlet-proxy end to end: real clients, real iptables, two meshed pods in namespaces.

    client pod: meshlet-proxy-init + meshlet-proxy (UID 2102); curl, h2load, Python sockets
    server pod: meshlet-proxy-init + meshlet-proxy (UID 2102); the applications below
    outside pod: not meshed; curl, and apps.py http on 8080
    node:       Service VIPs, DNAT to the server pod (kube-proxy style)

    Service web   10.96.0.10:80   -> server:8080  apps.py http (HTTP/1.1)
    Service h2    10.96.0.11:81   -> server:8081  nginx, HTTP/2 cleartext (prior knowledge)
    Service echo  10.96.0.12:7000 -> server:7000  apps.py echo (opaque, half-close)
    Service sink  10.96.0.13:7001 -> server:7001  apps.py sink (answers after half-close)
    Service db    10.96.0.14:3306 -> server:3306  apps.py banner (server speaks first, an
                                                  opaque port by default)
    Service grpc  10.96.0.15:50051 -> server:50051 grpc_app.py (grpcio, h2c)
    Service ws    10.96.0.16:8765 -> server:8765  ws_app.py (WebSocket echo)
    Service dead  10.96.0.17:9999 -> server:9999  nothing listens
    Service ghost 10.96.0.18:80   -> 10.244.0.250:80 an endpoint that does not exist

Every request therefore crosses the client pod's outbound proxy (4140), the node's Service NAT
and the server pod's inbound proxy (4143) before reaching the application on loopback. Tests
assert the bytes arrive intact and that both proxies' /metrics counted them.

Proxy logs are kept in pytest's temporary directory (``proxy-logs*/proxy-<pod>.log``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from tests.harness import PYTHON, HarnessError, Node, Pod, run
from tests.harness.mesh import (
    GRPC_APP,
    WS_APP,
    MeshedPod,
    Samples,
    http_get,
    mesh_pod,
    scrape,
    start_app,
    start_program,
)
from tests.harness.nginx import start_h2c_nginx, write_h2c_config

pytestmark = [pytest.mark.root, pytest.mark.slow]

BIG_H2_FILE = 8 * 1024 * 1024


@dataclass
class Mesh:
    node: Node
    client: MeshedPod
    server: MeshedPod
    outside: Pod
    tmp: Path

    def vip(self, service: str) -> tuple[str, int]:
        found = self.node.services[service]
        return found.vip, found.port

    def url(self, service: str, path: str = "/") -> str:
        host, port = self.vip(service)
        return f"http://{host}:{port}{path}"

    def curl(self, *args: str, timeout: float = 120) -> str:
        done = self.client.pod.run_result(["curl", "-sS", "--fail", *args], timeout=timeout)
        assert done.returncode == 0, f"curl {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("proxy-logs")
    node = Node()
    try:
        server = mesh_pod(node, "server", tmp)
        client = mesh_pod(node, "client", tmp)
        outside = node.add_pod("outside")
        start_app(outside, "http", 8080)
        pod = server.pod
        start_app(pod, "http", 8080)
        start_app(pod, "echo", 7000)
        start_app(pod, "sink", 7001)
        start_app(pod, "banner", 3306)
        start_program(pod, [PYTHON, GRPC_APP, "serve", "50051"])
        start_program(pod, [PYTHON, WS_APP, "8765"])
        if shutil.which("nginx"):
            nginx_dir = tmp / "nginx"
            nginx_dir.mkdir()
            (nginx_dir / "big.bin").write_bytes(os.urandom(BIG_H2_FILE))
            start_h2c_nginx(pod, write_h2c_config(nginx_dir, files=("big.bin",)))
        node.add_service("web", 80, [pod], target_port=8080)
        node.add_service("h2", 81, [pod], target_port=8081)
        node.add_service("echo", 7000, [pod])
        node.add_service("sink", 7001, [pod])
        node.add_service("db", 3306, [pod])
        node.add_service("grpc", 50051, [pod])
        node.add_service("ws", 8765, [pod])
        node.add_service("dead", 9999, [pod])
        node.add_service("ghost", 80, ["10.244.0.250"])
        yield Mesh(node, client, server, outside, tmp)
    finally:
        node.close()


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


def test_http1_keep_alive(mesh: Mesh) -> None:
    before_client, before_server = scrape(mesh.client.pod), scrape(mesh.server.pod)
    url = mesh.url("web", "/hello")
    out = mesh.curl(url, "-w", "|%{num_connects}\n", url, "-w", "|%{num_connects}\n")
    # Both responses intact; the second request reused the first connection.
    assert out == "hello from the server pod\n|1\nhello from the server pod\n|0\n"
    after_client, after_server = scrape(mesh.client.pod), scrape(mesh.server.pod)
    assert _delta(before_client, after_client, "request_total", direction="outbound") == 2
    assert _delta(before_server, after_server, "request_total", direction="inbound") == 2
    assert (
        _delta(
            before_server,
            after_server,
            "response_total",
            direction="inbound",
            status_code="200",
            classification="success",
        )
        == 2
    )


def test_http1_chunked_upload_50mb(mesh: Mesh) -> None:
    payload = mesh.tmp / "upload.bin"
    size = 50 * 1024 * 1024
    with payload.open("wb") as out:
        for _ in range(size // (1024 * 1024)):
            out.write(os.urandom(1024 * 1024))
    expected = hashlib.sha256(payload.read_bytes()).hexdigest()
    before = scrape(mesh.server.pod)
    answer = mesh.curl(
        *("-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/octet-stream"),
        *("--data-binary", f"@{payload}", mesh.url("web", "/sha256")),
    )
    assert json.loads(answer) == {"sha256": expected, "bytes": size}
    after = scrape(mesh.server.pod)
    assert _delta(before, after, "tcp_read_bytes_total", direction="inbound") >= size
    payload.unlink()


def test_http1_large_download(mesh: Mesh) -> None:
    size = 20 * 1024 * 1024
    target = mesh.tmp / "download.bin"
    mesh.curl("-o", str(target), mesh.url("web", f"/bytes/{size}"))
    pattern = bytes(range(256)) * (65536 // 256)
    expected = hashlib.sha256(pattern * (size // len(pattern))).hexdigest()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected
    target.unlink()


def test_http1_expect_100_continue(mesh: Mesh) -> None:
    body = mesh.tmp / "small.bin"
    body.write_bytes(os.urandom(300_000))
    done = mesh.client.pod.run_result(
        [
            *("curl", "-sS", "--fail", "-v", "-H", "Expect: 100-continue"),
            *("--data-binary", f"@{body}", mesh.url("web", "/sha256")),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "HTTP/1.1 100 Continue" in done.stderr
    assert json.loads(done.stdout)["sha256"] == hashlib.sha256(body.read_bytes()).hexdigest()


needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None, reason="needs nginx (the HTTP/2 cleartext server)"
)


@needs_nginx
def test_http2_prior_knowledge_curl(mesh: Mesh) -> None:
    before = scrape(mesh.client.pod), scrape(mesh.server.pod)
    out = mesh.curl("--http2-prior-knowledge", "-w", "|%{http_version}", mesh.url("h2"))
    assert out == "h2 ok\n|2"
    after = scrape(mesh.client.pod), scrape(mesh.server.pod)
    assert _delta(before[0], after[0], "request_total", direction="outbound") == 1
    assert _delta(before[1], after[1], "request_total", direction="inbound") == 1


@needs_nginx
def test_http2_large_download_crosses_flow_control(mesh: Mesh) -> None:
    """8 MiB in one HTTP/2 response: far beyond the 64 KiB initial window on every hop."""
    target = mesh.tmp / "big-h2.bin"
    mesh.curl(
        "--http2-prior-knowledge", "--max-time", "8", "-o", str(target), mesh.url("h2", "/big.bin")
    )
    original = (mesh.tmp / "nginx" / "big.bin").read_bytes()
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(original).digest()
    target.unlink()


@needs_nginx
@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
def test_http2_h2load(mesh: Mesh) -> None:
    before = scrape(mesh.client.pod), scrape(mesh.server.pod)
    done = mesh.client.pod.run_result(
        ["h2load", "-n", "400", "-c", "4", "-m", "10", mesh.url("h2")], timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", done.stdout
    )
    assert match is not None, done.stdout
    assert match.groups() == ("400", "400", "400"), done.stdout
    assert "status codes: 400 2xx" in done.stdout
    after = scrape(mesh.client.pod), scrape(mesh.server.pod)
    assert _delta(before[0], after[0], "request_total", direction="outbound") == 400
    assert (
        _delta(before[1], after[1], "response_total", direction="inbound", status_code="200") == 400
    )


def _exchange(pod: Pod, address: tuple[str, int], payload: bytes) -> bytes:
    """Send ``payload`` then half-close, while reading everything until EOF."""
    received = bytearray()
    with pod.connect(address, timeout=30) as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        while chunk := sock.recv(65536):
            received += chunk
        sender.join(30)
    return bytes(received)


def test_opaque_tcp_echo_with_half_close(mesh: Mesh) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    before = scrape(mesh.client.pod)
    assert _exchange(mesh.client.pod, mesh.vip("echo"), payload) == payload
    after = scrape(mesh.client.pod)
    assert _delta(before, after, "tcp_open_total", direction="outbound") >= 1
    assert _delta(before, after, "tcp_read_bytes_total", direction="outbound") >= 2 * len(payload)
    assert _delta(before, after, "tcp_write_bytes_total", direction="outbound") >= 2 * len(payload)


def test_half_close_keeps_the_other_direction_open(mesh: Mesh) -> None:
    payload = os.urandom(1024 * 1024)
    answer = _exchange(mesh.client.pod, mesh.vip("sink"), payload)
    assert answer == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}\n".encode()


def test_server_speaks_first_on_an_opaque_port(mesh: Mesh) -> None:
    """3306 skips detection: the banner arrives long before the 10 s detection timeout."""
    with mesh.client.pod.connect(mesh.vip("db"), timeout=5) as sock:
        lines = sock.makefile("rwb")
        assert lines.readline() == b"220 meshlet-test ready\r\n"
        lines.write(b"HELO meshlet\r\n")
        lines.flush()
        assert lines.readline() == b"250 HELO meshlet\r\n"
        lines.write(b"QUIT\r\n")
        lines.flush()
        assert lines.readline() == b"221 bye\r\n"
        assert lines.readline() == b""


def test_server_speaks_first_after_detection_timeout(node: Node, tmp_path: Path) -> None:
    """On a port that is not opaque, detection times out and the proxies fall back to TCP."""
    env = {"MESHLET_PROXY_DETECT_TIMEOUT": "300ms"}
    server = mesh_pod(node, "server", tmp_path, env=env)
    client = mesh_pod(node, "client", tmp_path, env=env)
    start_app(server.pod, "banner", 2525)
    mail = node.add_service("mail", 2525, [server.pod])
    with client.pod.connect((mail.vip, mail.port), timeout=10) as sock:
        lines = sock.makefile("rwb")
        assert lines.readline() == b"220 meshlet-test ready\r\n"
        lines.write(b"QUIT\r\n")
        lines.flush()
        assert lines.readline() == b"221 bye\r\n"
    assert scrape(client.pod).total("tcp_open_total", direction="outbound") >= 1


def test_upstream_refused_is_a_502_naming_the_cause(mesh: Mesh) -> None:
    before = scrape(mesh.server.pod)
    done = mesh.client.pod.run_result(["curl", "-sS", "-i", mesh.url("dead", "/")])
    assert done.returncode == 0, done.stderr
    head = done.stdout.split("\r\n\r\n", 1)[0].lower()
    assert head.startswith("http/1.1 502"), head
    assert "meshlet-proxy-error: upstream_connect_refused" in head
    after = scrape(mesh.server.pod)
    failures = _delta(
        before, after, "response_total", direction="inbound", classification="failure"
    )
    assert failures == 1


def test_upstream_connect_timeout_is_a_504(mesh: Mesh) -> None:
    """The client pod's proxy gives up on an endpoint that never answers (1 s by default)."""
    before = scrape(mesh.client.pod)
    done = mesh.client.pod.run_result(
        ["curl", "-sS", "-i", "--max-time", "20", mesh.url("ghost", "/")]
    )
    assert done.returncode == 0, done.stderr
    head = done.stdout.split("\r\n\r\n", 1)[0].lower()
    assert head.startswith("http/1.1 504"), head
    assert "meshlet-proxy-error: upstream_connect_timeout" in head
    after = scrape(mesh.client.pod)
    assert _delta(before, after, "response_total", direction="outbound", status_code="504") == 1


def test_upstream_reset_mid_body_fails_the_client_fast(mesh: Mesh) -> None:
    """An upstream that resets after part of the body: the client sees a broken transfer, not
    a hang and not a short body passed off as complete."""
    target = mesh.tmp / "partial.bin"
    done = mesh.client.pod.run_result(
        ["curl", "-sS", "--max-time", "20", "-o", str(target), mesh.url("web", "/reset")]
    )
    # 18: transfer closed with data outstanding; 56: connection reset. 28 would be a hang.
    assert done.returncode in {18, 56}, (done.returncode, done.stderr)
    assert target.stat().st_size < 1024 * 1024
    # The proxies are unharmed: the next request works.
    assert mesh.curl(mesh.url("web", "/hello")) == "hello from the server pod\n"


def test_grpc_unary_failure_and_bidi_streaming(mesh: Mesh) -> None:
    host, port = mesh.vip("grpc")
    before = scrape(mesh.client.pod)
    answer = json.loads(
        mesh.client.pod.run([PYTHON, GRPC_APP, "call", host, str(port)], timeout=60)
    )
    assert answer["unary"] == "hsem olleh"
    assert answer["unary_code"] == "OK"
    assert answer["unary_trailers"] == {"x-served-by": "server"}
    assert answer["fail_code"] == "NOT_FOUND"
    assert answer["fail_details"] == "no such thing"
    assert answer["chat"] == [f"echo:m{i}" for i in range(100)]
    assert answer["chat_code"] == "OK"
    assert answer["chat_trailers"] == {"x-count": "100"}
    after = scrape(mesh.client.pod)
    target = f"{host}:{port}"
    assert _delta(before, after, "tcp_open_total", direction="outbound", target_addr=target) >= 1
    # Three calls; the aborted one (grpc-status 5 in the trailers) is a failure, as in Linkerd.
    assert _delta(before, after, "request_total", direction="outbound") == 3
    outcome = {"direction": "outbound", "status_code": "200"}
    assert _delta(before, after, "response_total", **outcome, classification="success") == 2
    assert _delta(before, after, "response_total", **outcome, classification="failure") == 1


def _grpc_call(mesh: Mesh, which: str) -> dict[str, object]:
    host, port = mesh.vip("grpc")
    command = [PYTHON, GRPC_APP, "call", host, str(port), which]
    answer = json.loads(mesh.client.pod.run(command, timeout=60))
    assert isinstance(answer, dict)
    return answer


def test_grpc_large_streams_cross_flow_control(mesh: Mesh) -> None:
    """20 MiB each way (client stream up, server stream down), intact, through HTTP/2 flow
    control on every hop (the default window is 64 KiB, so this needs WINDOW_UPDATEs)."""
    answer = _grpc_call(mesh, "large")
    assert answer == {"digest_matches": True, "download_matches": True}


def test_grpc_cancel_and_deadline(mesh: Mesh) -> None:
    """A client's cancel reaches the server (RST_STREAM across both proxies); a deadline that
    expires gives DEADLINE_EXCEEDED."""
    answer = _grpc_call(mesh, "cancel")
    assert answer == {
        "forever_first": ["1", "2", "3"],
        "forever_code": "CANCELLED",
        "server_saw_cancel": "yes",
        "slow_code": "DEADLINE_EXCEEDED",
    }


def test_websocket_echo(mesh: Mesh) -> None:
    host, port = mesh.vip("ws")
    before = scrape(mesh.server.pod)
    sock = mesh.client.pod.connect((host, port), timeout=10)
    with ws_connect(f"ws://{host}:{port}/echo", sock=sock, open_timeout=10) as ws:
        ws.send("hello through the mesh")
        assert ws.recv(timeout=10) == "hello through the mesh"
        blob = os.urandom(256 * 1024)
        ws.send(blob)
        assert ws.recv(timeout=10) == blob
    after = scrape(mesh.server.pod)
    assert _delta(before, after, "request_total", direction="inbound") == 1  # the upgrade


def test_unmeshed_client_to_meshed_server(mesh: Mesh) -> None:
    """Only the server's inbound proxy is on the path."""
    before = scrape(mesh.server.pod)
    done = mesh.outside.run_result(["curl", "-sS", "--fail", mesh.url("web", "/hello")])
    assert (done.returncode, done.stdout) == (0, "hello from the server pod\n"), done.stderr
    after = scrape(mesh.server.pod)
    assert _delta(before, after, "request_total", direction="inbound") == 1


def test_meshed_client_to_unmeshed_server(mesh: Mesh) -> None:
    """Only the client's outbound proxy is on the path; the target is a pod IP, no Service."""
    before = scrape(mesh.client.pod)
    out = mesh.curl(f"http://{mesh.outside.ip}:8080/hello")
    assert out == "hello from the server pod\n"
    after = scrape(mesh.client.pod)
    authority = f"{mesh.outside.ip}:8080"
    assert _delta(before, after, "request_total", direction="outbound", authority=authority) == 1


def test_connection_addressed_to_the_proxy_port_is_refused_promptly(mesh: Mesh) -> None:
    """A client that dials the inbound port itself would make the proxy forward to itself:
    the connection is closed at once instead of looping."""
    with mesh.outside.connect((mesh.server.pod.ip, 4143), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
    assert data == b"" or data.startswith(b"HTTP/1.1 4")
    hello = http_get(mesh.outside, mesh.vip("web"), "/hello")
    assert hello == (200, b"hello from the server pod\n")  # the proxy is unharmed


def test_probes_from_the_node_reach_the_admin_port_directly(mesh: Mesh) -> None:
    """The kubelet probes /ready on 4191 from the node: skipped by the rules, answered by the
    admin server itself, and not counted as proxied traffic."""
    before = scrape(mesh.server.pod)
    assert http_get(mesh.node.netns, (mesh.server.pod.ip, 4191), "/ready")[0] == 200
    assert http_get(mesh.node.netns, (mesh.server.pod.ip, 4191), "/live")[0] == 200
    after = scrape(mesh.server.pod)
    assert _delta(before, after, "tcp_open_total", direction="inbound") == 0
    # A probe of the application port goes through the inbound proxy like any client.
    assert http_get(mesh.node.netns, (mesh.server.pod.ip, 8080), "/hello")[0] == 200
    assert _delta(after, scrape(mesh.server.pod), "request_total", direction="inbound") == 1


def test_machine_network_untouched_by_the_mesh(mesh: Mesh) -> None:
    """The pods' rules live in the pods: the machine's own nat table has none of them."""
    try:
        text = run(["iptables-save", "-t", "nat"])
    except HarnessError:  # no nat table at all on the machine: nothing of ours either
        text = ""
    assert "meshlet-init" not in text
    assert "KUBE-SVC-WEB" not in text
