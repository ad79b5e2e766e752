"""Identity service: certificates issued per second and /v1/certify latency over HTTPS keep-alive.

A real ``meshlet-identity`` process (local mode: the static token file is a zero-latency token
review) pinned to one core; the client runs on the other. Three figures, each the median of 3 runs:

- throughput: certify requests answered 200 per second, 4 keep-alive connections, closed loop;
- latency p50/p99 at a paced 100 requests/s on one keep-alive connection;
- reference in the same run: ``GET /healthz`` on the same connection (framework + TLS floor) and
  the CSR check + leaf signing alone, in process (the cryptography floor).

Bounded: each run stops after a request count or a few seconds, whichever comes first.
``python -m bench identity [--quick]``.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from identity.ca import Issuer, create_issuer, create_trust_anchor, sign_leaf
from identity.csr import check_csr
from identity.pemfiles import certificate_pem, private_key_pem
from meshlet.names import control_plane_identity, workload_identity

SERVICE = control_plane_identity("identity")
IDENTITY = workload_identity("web", "shop")
RUNS = 3


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, IDENTITY)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(IDENTITY)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server:
    def __init__(self, directory: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        anchor = create_trust_anchor(name="root", now=now, lifetime=datetime.timedelta(days=2))
        issuer = create_issuer(
            anchor, name="identity", now=now, lifetime=datetime.timedelta(days=1)
        )
        self.issuer = Issuer(
            certificate=issuer.certificate, key=issuer.key, anchors=(anchor.certificate,)
        )
        self.anchors = directory / "ca.crt"
        self.anchors.write_bytes(certificate_pem(anchor.certificate))
        (directory / "crt.pem").write_bytes(certificate_pem(issuer.certificate))
        (directory / "key.pem").write_bytes(private_key_pem(issuer.key))
        (directory / "tokens").write_text("bench-token shop/web\n")
        self.port = _free_port()
        env = {
            **os.environ,
            "MESHLET_IDENTITY_LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "MESHLET_IDENTITY_ISSUER_CERT_FILE": str(directory / "crt.pem"),
            "MESHLET_IDENTITY_ISSUER_KEY_FILE": str(directory / "key.pem"),
            "MESHLET_IDENTITY_TRUST_ANCHORS_FILE": str(self.anchors),
            "MESHLET_IDENTITY_TOKEN_SOURCE": str(directory / "tokens"),
            "MESHLET_IDENTITY_LOG_LEVEL": "error",
        }
        self.process = subprocess.Popen([sys.executable, "-m", "identity"], env=env)
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:  # the server gets one core, the client the others
            os.sched_setaffinity(self.process.pid, {cpus[0]})
            os.sched_setaffinity(0, set(cpus[1:]))
        self.context = ssl.create_default_context(cafile=str(self.anchors))
        deadline = time.monotonic() + 20
        while True:
            try:
                self.connection().request("GET", "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("meshlet-identity did not start") from None
                time.sleep(0.1)

    def connection(self) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(
            SERVICE, self.port, context=self.context, timeout=10
        )
        raw = socket.create_connection(("127.0.0.1", self.port))
        # As HTTPConnection.connect does: headers and body go out in separate writes.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.sock = self.context.wrap_socket(raw, server_hostname=SERVICE)
        return connection

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _certify(connection: http.client.HTTPSConnection, body: bytes) -> float:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-token"}
    started = time.perf_counter()
    connection.request("POST", "/v1/certify", body=body, headers=headers)
    response = connection.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"certify answered {response.status}: {payload[:200]!r}")
    return elapsed


def _throughput(
    server: _Server, body: bytes, *, connections: int, limit: int, seconds: float
) -> float:
    done = [0] * connections
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        connection = server.connection()
        while done[index] < limit // connections and time.monotonic() < deadline:
            _certify(connection, body)
            done[index] += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def _paced(server: _Server, body: bytes | None, *, rate: float, count: int) -> list[float]:
    connection = server.connection()
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if body is None:
            began = time.perf_counter()
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            latencies.append(time.perf_counter() - began)
        else:
            latencies.append(_certify(connection, body))
    connection.close()
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _in_process(issuer: Issuer, csr: str, seconds: float) -> float:
    count = 0
    now = datetime.datetime.now(datetime.UTC)
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline and count < 20000:
        verdict = check_csr(csr.encode(), IDENTITY)
        assert verdict.public_key is not None
        sign_leaf(issuer, verdict.public_key, IDENTITY, now=now)
        count += 1
    return count / (time.perf_counter() - started)


def run(args: list[str]) -> None:
    quick = "--quick" in args
    limit, seconds, paced = (300, 2.0, 100) if quick else (4000, 5.0, 300)
    csr = _csr()
    body = json.dumps({"identity": IDENTITY, "csr": csr}).encode()
    results: dict[str, list[float]] = {
        k: [] for k in ("rps", "p50", "p99", "ref_p50", "ref_p99", "floor")
    }
    with tempfile.TemporaryDirectory(prefix="bench-identity-") as tmp:
        server = _Server(Path(tmp))
        try:
            _paced(server, body, rate=1000, count=50)  # warm-up
            for _ in range(RUNS):
                results["rps"].append(
                    _throughput(server, body, connections=4, limit=limit, seconds=seconds)
                )
                latencies = _paced(server, body, rate=100, count=paced)
                results["p50"].append(_percentile(latencies, 0.50) * 1000)
                results["p99"].append(_percentile(latencies, 0.99) * 1000)
                reference = _paced(server, None, rate=100, count=paced)
                results["ref_p50"].append(_percentile(reference, 0.50) * 1000)
                results["ref_p99"].append(_percentile(reference, 0.99) * 1000)
                results["floor"].append(_in_process(server.issuer, csr, 1.0))
        finally:
            server.stop()
    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"certify throughput (4 keep-alive conns, server on 1 core): {median['rps']:.0f} certs/s")
    print(f"certify latency at 100 req/s:  p50 {median['p50']:.2f} ms  p99 {median['p99']:.2f} ms")
    print(
        "reference GET /healthz at 100 req/s: "
        f"p50 {median['ref_p50']:.2f} ms  p99 {median['ref_p99']:.2f} ms"
    )
    print(f"reference CSR check + leaf signing in process: {median['floor']:.0f} /s")
    print(f"(medians of {RUNS} runs; runs: rps {[round(v) for v in results['rps']]})")
