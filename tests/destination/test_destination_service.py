"""The real service: a ``meshlet-destination`` process over real TLS, read with ``curl -N``
while the local YAML file changes under it."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .dst_server import CurlStream, DestinationProcess, destination, write_yaml

WEB = "web.shop.svc.cluster.local:80"
IDENTITY = "web.shop.serviceaccount.identity.meshlet.cluster.local"


def web_yaml(*addresses: str, profile: str = "") -> str:
    endpoints = "".join(
        f"      - {{address: {a}, pod: web-{a.replace('.', '-')}, serviceAccount: web,"
        " owner: {kind: deployment, name: web}}\n"
        for a in addresses
    )
    return (
        "services:\n"
        "  - name: web\n"
        "    namespace: shop\n"
        "    clusterIP: 10.96.0.10\n"
        "    ports: [{name: http, port: 80, targetPort: 8080}]\n"
        "    endpoints:\n" + (endpoints or "      []\n") + profile
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DestinationProcess]:
    with destination(tmp_path, web_yaml("127.0.0.1")) as running:
        yield running


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DestinationProcess]:
    """One server for the tests that do not change the file."""
    with destination(tmp_path_factory.mktemp("shared"), web_yaml("127.0.0.1")) as running:
        yield running


@pytest.fixture
def streams() -> Iterator[list[CurlStream]]:
    opened: list[CurlStream] = []
    try:
        yield opened
    finally:
        for stream in opened:
            stream.close()


def open_stream(server: DestinationProcess, streams: list[CurlStream], path: str) -> CurlStream:
    stream = CurlStream(server, path)
    streams.append(stream)
    return stream


def test_endpoint_stream_follows_the_file(
    server: DestinationProcess, streams: list[CurlStream]
) -> None:
    stream = open_stream(server, streams, f"/v1/endpoints?authority={WEB}")
    snapshot = stream.next()
    assert snapshot == {
        "type": "snapshot",
        "exists": True,
        "endpoints": [
            {
                "address": "127.0.0.1",
                "port": 8080,
                "weight": 10000,
                "identity": IDENTITY,
                "protocol_hint": "h2",
                "labels": {
                    "namespace": "shop",
                    "service": "web",
                    "pod": "web-127-0-0-1",
                    "deployment": "web",
                    "serviceaccount": "web",
                    "control_plane_ns": "meshlet",
                },
            }
        ],
    }
    write_yaml(server.yaml_file, web_yaml("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    added = stream.next()
    assert added is not None
    assert added["type"] == "add"
    assert [e["address"] for e in added["endpoints"]] == ["127.0.0.2", "127.0.0.3"]
    write_yaml(server.yaml_file, web_yaml("127.0.0.3"))
    assert stream.next() == {
        "type": "remove",
        "endpoints": [
            {"address": "127.0.0.1", "port": 8080},
            {"address": "127.0.0.2", "port": 8080},
        ],
    }
    write_yaml(server.yaml_file, "services: []\n")
    assert stream.next() == {"type": "snapshot", "exists": False, "endpoints": []}
    # Idle streams carry keepalive lines (every second here).
    assert stream.next(5, skip_keepalive=False) == {"type": "keepalive"}
    # The three changes were written by the hub straight to the connection (uvicorn's
    # transport was found), each fan-out timed.
    assert metric(server, 'destination_fanout_streams_total{path="direct"}') == 3
    assert metric(server, 'destination_fanout_streams_total{path="task"}') == 0
    assert metric(server, "destination_fanout_seconds_count") == 3


def metric(server: DestinationProcess, name: str) -> float:
    status, text = server.get("/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_without_uvloop_the_same_stream_on_asyncio(
    tmp_path: Path, streams: list[CurlStream]
) -> None:
    """uvloop is optional: on asyncio's own loop the hub still writes to the connections."""
    with destination(tmp_path, web_yaml("127.0.0.1"), without_uvloop=True) as running:
        stream = open_stream(running, streams, f"/v1/endpoints?authority={WEB}")
        assert stream.next() is not None
        write_yaml(running.yaml_file, web_yaml("127.0.0.1", "127.0.0.2"))
        added = stream.next()
        assert added is not None
        assert [e["address"] for e in added["endpoints"]] == ["127.0.0.2"]
        assert metric(running, 'destination_fanout_streams_total{path="direct"}') == 1
        assert running.stop(signal.SIGTERM) == 0


def test_a_client_that_leaves_ends_its_stream(
    server: DestinationProcess, streams: list[CurlStream]
) -> None:
    stream = open_stream(server, streams, f"/v1/endpoints?authority={WEB}")
    assert stream.next() is not None
    active = 'destination_streams_active{api="endpoints"}'
    assert metric(server, active) == 1
    stream.close()
    deadline = time.monotonic() + 10
    while metric(server, active) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, active) == 0


def test_a_broken_edit_keeps_the_last_good_state(
    server: DestinationProcess, streams: list[CurlStream]
) -> None:
    stream = open_stream(server, streams, f"/v1/endpoints?authority={WEB}")
    assert stream.next()["type"] == "snapshot"  # type: ignore[index]
    write_yaml(server.yaml_file, "services: [")
    time.sleep(0.3)
    write_yaml(server.yaml_file, web_yaml("127.0.0.1", "127.0.0.9"))
    added = stream.next()
    assert added is not None
    assert [e["address"] for e in added["endpoints"]] == ["127.0.0.9"]
    status, metrics = server.get("/metrics")
    assert status == 200
    assert 'destination_api_errors_total{kind="all",reason="bad_local_file"} 1.0' in metrics


def test_unknown_name_then_it_appears(
    server: DestinationProcess, streams: list[CurlStream]
) -> None:
    stream = open_stream(server, streams, "/v1/endpoints?authority=api.shop.svc.cluster.local:9000")
    assert stream.next() == {"type": "snapshot", "exists": False, "endpoints": []}
    text = web_yaml("127.0.0.1") + (
        "  - name: api\n    namespace: shop\n    ports: [{port: 9000}]\n"
        "    endpoints: [{address: 127.0.0.5, meshed: false}]\n"
    )
    write_yaml(server.yaml_file, text)
    appeared = stream.next()
    assert appeared is not None
    assert appeared["type"] == "snapshot"
    assert appeared["exists"] is True
    (endpoint,) = appeared["endpoints"]
    assert (endpoint["address"], endpoint["port"], endpoint["identity"]) == (
        "127.0.0.5",
        9000,
        None,
    )


def test_cluster_ip_and_pod_ip_authorities(
    server: DestinationProcess, streams: list[CurlStream]
) -> None:
    by_cluster_ip = open_stream(server, streams, "/v1/endpoints?authority=10.96.0.10:80")
    snapshot = by_cluster_ip.next()
    assert snapshot is not None
    assert [e["address"] for e in snapshot["endpoints"]] == ["127.0.0.1"]
    by_pod_ip = open_stream(server, streams, "/v1/endpoints?authority=127.0.0.1:7000")
    snapshot = by_pod_ip.next()
    assert snapshot is not None
    assert [(e["address"], e["port"], e["identity"]) for e in snapshot["endpoints"]] == [
        ("127.0.0.1", 7000, IDENTITY)
    ]


def test_profile_stream_default_then_custom(
    server: DestinationProcess, streams: list[CurlStream]
) -> None:
    stream = open_stream(server, streams, f"/v1/profiles?authority={WEB}")
    assert stream.next() == {
        "type": "profile",
        "exists": False,
        "fully_qualified_name": "web.shop.svc.cluster.local",
        "routes": [],
        "retry_budget": {"retry_ratio": 0.2, "min_retries_per_second": 10, "ttl": "10s"},
    }
    profile = (
        "profiles:\n"
        "  - name: web.shop.svc.cluster.local\n"
        "    namespace: shop\n"
        "    routes: [{name: books, condition: {method: GET, pathRegex: '/books/.*'},"
        " isRetryable: true, timeout: 2s}]\n"
    )
    write_yaml(server.yaml_file, web_yaml("127.0.0.1", profile=profile))
    update = stream.next()
    assert update is not None
    assert update["exists"] is True
    assert update["routes"] == [
        {
            "name": "books",
            "condition": {"method": "GET", "path_regex": "/books/.*"},
            "response_classes": [],
            "is_retryable": True,
            "timeout": "2s",
        }
    ]
    write_yaml(server.yaml_file, web_yaml("127.0.0.2", profile=profile))  # endpoints only
    write_yaml(server.yaml_file, web_yaml("127.0.0.2"))
    assert stream.next()["exists"] is False  # type: ignore[index]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        pytest.param("authority=web.shop:80", "not_cluster_name", id="malformed"),
        pytest.param("authority=10.0.0.1:70000", "port_out_of_range", id="port-range"),
        pytest.param(f"authority={WEB}&watch=1", "unknown_parameter", id="unknown-param"),
        pytest.param("", "missing_authority", id="missing"),
        pytest.param(f"authority={WEB}&authority={WEB}", "missing_authority", id="twice"),
        pytest.param("authority=" + "a" * 2000, "query_too_long", id="huge"),
    ],
)
def test_bad_requests_are_400_with_a_reason(
    server: DestinationProcess, query: str, reason: str
) -> None:
    for api in ("endpoints", "profiles"):
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(server.ca),
                "-w",
                "\n%{http_code}",
                f"{server.base}/v1/{api}?{query}",
            ],
            capture_output=True,
            check=True,
            timeout=10,
        )
        body, _, status = result.stdout.decode().rpartition("\n")
        assert status == "400"
        refusal = json.loads(body)
        assert refusal["error"] == reason
        assert refusal["message"]


def test_health_readiness_and_metrics(
    server: DestinationProcess, streams: list[CurlStream]
) -> None:
    assert server.get("/healthz") == (200, "ok\n")
    assert server.get("/readyz") == (200, "ready\n")
    stream = open_stream(server, streams, f"/v1/endpoints?authority={WEB}")
    assert stream.next() is not None
    status, text = server.get("/metrics")
    assert status == 200
    assert 'destination_streams_active{api="endpoints"} 1.0' in text
    assert 'destination_updates_sent_total{api="endpoints",type="snapshot"} 1.0' in text
    assert 'destination_watch_events_total{kind="Service",type="RELISTED"}' in text


def test_sigterm_closes_streams_with_a_reason_and_exits_promptly(
    server: DestinationProcess, streams: list[CurlStream]
) -> None:
    stream = open_stream(server, streams, f"/v1/endpoints?authority={WEB}")
    assert stream.next() is not None
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0  # a graceful stop, not death by the signal
    assert time.monotonic() - started < 8
    closing = stream.next()
    assert closing == {"type": "close", "reason": "the destination service is shutting down"}
    assert stream.next() is None


def test_a_stalled_reader_is_coalesced_not_queued(tmp_path: Path) -> None:
    """A client that stops reading: the server's writes block on TCP, later changes fold into
    one pending diff, and when the client reads again it converges on the latest file."""
    many = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(1500)]
    with destination(tmp_path, web_yaml(*many)) as running:
        context = ssl.create_default_context(cafile=str(running.ca))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", running.port))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"GET /v1/endpoints?authority={WEB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            # Flip between two large sets without reading (each diff is ~50-350 KB) until the
            # kernel and transport buffers are full and changes start folding together.
            changes, coalesced = 0, 0.0
            while changes < 80 and not coalesced:
                write_yaml(running.yaml_file, web_yaml(*(many if changes % 2 else many[:10])))
                changes += 1
                time.sleep(0.1)
                _, text = running.get("/metrics")
                for line in text.splitlines():
                    if line.startswith('destination_updates_coalesced_total{api="endpoints"}'):
                        coalesced = float(line.split()[-1])
            assert coalesced > 0
            # the stalled stream's later changes went to its own task (flow control paused it)
            assert metric(running, 'destination_fanout_streams_total{path="task"}') > 0
            final = many[:3]
            write_yaml(running.yaml_file, web_yaml(*final))
            changes += 1
            # Now read everything and replay it: the client ends at exactly the final file.
            tls.settimeout(0.5)
            buffer = b""
            current: dict[tuple[str, int], dict[str, object]] = {}
            lines = 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    chunk = tls.recv(1 << 20)
                except TimeoutError:
                    if sorted(a for a, _ in current) == sorted(final):
                        break
                    continue
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw_line in complete:
                    start = raw_line.find(b"{")
                    if start < 0:
                        continue  # chunked-encoding size lines
                    message = json.loads(raw_line[start:])
                    lines += 1
                    if message["type"] == "snapshot":
                        current = {(e["address"], e["port"]): e for e in message["endpoints"]}
                    elif message["type"] == "add":
                        current.update({(e["address"], e["port"]): e for e in message["endpoints"]})
                    elif message["type"] == "remove":
                        for e in message["endpoints"]:
                            current.pop((e["address"], e["port"]))
            assert sorted(a for a, _ in current) == sorted(final)
            # A reader keeping up gets the snapshot, then one line per change.
            assert lines < 1 + changes, "some changes were folded together"


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        (["--source", "x.yaml"], "--tls-cert"),
        (
            ["--self-signed", str(tmp_path), "--source", str(tmp_path / "missing.yaml")],
            "is not a readable file",
        ),
        (["--self-signed", str(tmp_path), "--keepalive-interval", "soon"], "keepalive-interval"),
        (
            [
                *("--tls-cert-file", str(tmp_path / "no.crt")),
                *("--tls-key-file", str(tmp_path / "no.key")),
            ],
            "cannot load TLS",
        ),
    ]
    for argv, fragment in cases:
        result = subprocess.run(
            [sys.executable, "-m", "destination", *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert fragment in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
