"""The mesh end to end: identity and destination in local mode, meshed pods in namespaces.

    node:      meshlet-identity (10.244.0.1:8080), meshlet-destination (10.244.0.1:8086),
               kube-proxy-style DNAT for every Service VIP
    client     meshed, ServiceAccount "client"
    web-0..2   meshed, ServiceAccount "web", mesh_app.py on 8080; web-0 and web-1 also run an
               opaque TCP echo on 3306 (an opaque port by default); web-1 is annotated
               config.meshlet.io/opaque-ports: "3306" (so discovery hints "opaque")
    outside    not meshed, mesh_app.py on 8080
    impostor   meshed, discovery says ServiceAccount "web" but its token (and so its
               certificate) is ServiceAccount "other"

    Service web    VIP:80    -> web-0, web-1, web-2 :8080 (profile: GET retryable)
    Service db     VIP:3306  -> web-0 :3306 (opaque TCP, default opaque port, no hint)
    Service db-annotated VIP:3306 -> web-1 :3306 (opaque TCP, annotated)
    Service empty  VIP:80    -> nothing (discovery knows it, with no endpoints)
    Service web-h2 VIP:81    -> web-0, web-1, web-2 :8081 (nginx, h2c, names the pod)
    Service plain  VIP:80    -> outside :8080 (unmeshed endpoint)
    Service fake   VIP:80    -> impostor :8080

Every proxy's env is the webhook's injection of its pod (tests/harness/mesh_node.py). The module
runs twice: with HTTP/1 between the proxies (the default), and with the client's proxy sending its
HTTP/1 requests as HTTP/2 streams to the server proxies' gateways
(``MESHLET_PROXY_OUTBOUND_HTTP1_UPGRADE=true``). Logs of every process are kept in pytest's
temporary directory (``mesh-logs*``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from meshlet.names import workload_identity
from tests.harness import Netns
from tests.harness.mesh import Samples, scrape, start_app
from tests.harness.mesh_load import HttpLoad, Outcome, request
from tests.harness.mesh_node import MeshNode, MeshPod, open_mesh_node
from tests.harness.nginx import start_h2c_nginx, write_h2c_config

pytestmark = [pytest.mark.root, pytest.mark.slow]

CLIENT_ID = workload_identity("client", "default")
WEB_ID = workload_identity("web", "default")
RETRY_GETS = [
    {"name": "GET /", "condition": {"method": "GET", "pathRegex": "/.*"}, "isRetryable": True}
]


def _start_h2_nginx(member: MeshPod, directory: Path) -> None:
    """nginx answering h2c (prior knowledge) on 8081 with the pod's name and client id."""
    directory.mkdir()
    answer = f"""'{{"pod": "{member.name}", "client_id": "$http_meshlet_client_id"}}'"""
    conf = write_h2c_config(directory, answer=answer, json=True)
    start_h2c_nginx(member.pod, conf, label=f"nginx in {member.name}")


@dataclass
class Mesh:
    node: MeshNode
    upgraded: bool  # the client's HTTP/1 requests travel as HTTP/2 streams between the proxies
    client: MeshPod
    web: list[MeshPod]
    outside: MeshPod
    impostor: MeshPod


@pytest.fixture(scope="module", params=[False, True], ids=["h1", "h1-over-h2"])
def mesh(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Mesh]:
    logs = tmp_path_factory.mktemp("mesh-logs")
    upgrade = {"MESHLET_PROXY_OUTBOUND_HTTP1_UPGRADE": str(request.param).lower()}
    with open_mesh_node(logs) as mesh_node:
        client = mesh_node.add_pod("client", serviceaccount="client", proxy_env=upgrade)
        web = [mesh_node.add_pod(f"web-{i}", serviceaccount="web") for i in range(3)]
        outside = mesh_node.add_pod("outside", meshed=False)
        impostor = mesh_node.add_pod("impostor", serviceaccount="web", token_for="other")
        for member in [*web, outside, impostor]:
            mesh_node.start_app(member)
        start_app(web[0].pod, "echo", 3306)
        start_app(web[1].pod, "echo", 3306)
        for member in web:
            _start_h2_nginx(member, logs / f"nginx-{member.name}")
        web[1].opaque_ports = "3306"
        mesh_node.add_service("web", 80, web, profile_routes=RETRY_GETS)
        mesh_node.add_service("db", 3306, [web[0]], target_port=3306)
        mesh_node.add_service("db-annotated", 3306, [web[1]], target_port=3306)
        mesh_node.add_service("empty", 80, [])
        mesh_node.add_service("web-h2", 81, web, target_port=8081)
        mesh_node.add_service("plain", 80, [outside])
        mesh_node.add_service("fake", 80, [impostor])
        mesh_node.wait_ready([client, *web, impostor])
        mesh_node.wait_discovered()
        yield Mesh(mesh_node, request.param, client, web, outside, impostor)


def _get(mesh: Mesh, service: str, path: str = "/", pod: MeshPod | None = None) -> Outcome:
    address = mesh.node.services[service].address
    return request((pod or mesh.client).pod, address, path)


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


def _failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status != 200]


def test_service_vip_spreads_over_three_servers_with_mtls(mesh: Mesh) -> None:
    before = [scrape(member.pod) for member in mesh.web]
    answers = [_get(mesh, "web", f"/spread/{i}") for i in range(60)]
    assert _failures(answers) == []
    assert [i for i, a in enumerate(answers) if a.client_id != CLIENT_ID] == []
    served = Counter(answer.pod for answer in answers)
    assert set(served) == {"web-0", "web-1", "web-2"}, served
    after = [scrape(member.pod) for member in mesh.web]
    for member, old, new in zip(mesh.web, before, after, strict=True):
        meshed = {"direction": "inbound", "tls": "true", "client_id": CLIENT_ID}
        inbound = [s for s in new.series if s[0] == "request_total"]
        assert _delta(old, new, "request_total", **meshed) == served[member.name], inbound
        assert _delta(old, new, "request_total", direction="inbound") == served[member.name]


def test_http1_between_the_proxies_is_http2_only_when_upgraded(mesh: Mesh) -> None:
    """With the upgrade, the client's proxy reaches each serving pod's proxy port (the transport
    header's HTTP/1-over-HTTP/2 session) and opens no connection to its application port;
    without it, the application port directly, as HTTP/1 (no opaque port of these pods is used
    while this runs). Every pod that served is checked, whichever the balancer picked."""
    before = {member.name: scrape(member.pod) for member in mesh.web}
    answers = [_get(mesh, "web", f"/upgrade/{i}") for i in range(30)]
    assert _failures(answers) == []
    served = Counter(answer.pod for answer in answers)
    members = [member for member in mesh.web if served[member.name]]
    assert members, served
    for member in members:
        proxy_port = {"target_addr": f"{member.pod.ip}:4143", "client_id": CLIENT_ID}
        app_port = {"target_addr": f"{member.pod.ip}:8080", "client_id": CLIENT_ID}
        after = scrape(member.pod)
        opened = _delta(before[member.name], after, "tcp_open_total", **proxy_port)
        direct = _delta(before[member.name], after, "tcp_open_total", **app_port)
        if mesh.upgraded:
            assert after.total("tcp_open_total", **proxy_port) >= 1, (member.name, after.series)
            assert direct == 0, f"{member.name}: an HTTP/1 connection to the application port"
        else:
            assert opened == 0, f"{member.name}: a connection to the proxy port"
            assert after.total("tcp_open_total", **app_port) >= 1, (member.name, after.series)


def test_application_sees_the_client_identity(mesh: Mesh) -> None:
    address = mesh.node.services["web"].address
    status, body = _raw_get(mesh.client.pod, address, "/who")
    assert status == 200
    assert json.loads(body)["client_id"] == CLIENT_ID


def _raw_get(
    pod: Netns, address: tuple[str, int], path: str, headers: str = ""
) -> tuple[int, bytes]:
    with pod.connect(address, timeout=10) as sock:
        host = f"{address[0]}:{address[1]}"
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n"
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    answer_head, _, body = data.partition(b"\r\n\r\n")
    return int(answer_head.split(b" ", 2)[1]), body


def _h2_gets(pod: Netns, address: tuple[str, int], count: int) -> list[dict[str, object]]:
    """``count`` sequential GETs on ONE h2c connection (prior knowledge); the decoded bodies."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    answers: list[dict[str, object]] = []
    with pod.connect(address, timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        for index in range(count):
            stream = conn.get_next_available_stream_id()
            headers = [(":method", "GET"), (":scheme", "http"), (":path", f"/h2/{index}"),
                       (":authority", f"{address[0]}:{address[1]}")]  # fmt: skip
            conn.send_headers(stream, headers, end_stream=True)
            sock.sendall(conn.data_to_send())
            body, status, done = b"", "", False
            while not done:
                data = sock.recv(65536)
                assert data, "connection closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"].decode()
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(len(event.data), event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                        done = True
                sock.sendall(conn.data_to_send())
            assert status == "200", (status, body)
            answers.append(json.loads(body))
    return answers


def test_http2_client_reaches_meshed_servers_over_mtls(mesh: Mesh) -> None:
    """An h2c app connection: every request answered, each over mTLS with the client's id,
    and balanced per request: the 30 requests of ONE connection reach all three pods."""
    answers = _h2_gets(mesh.client.pod, mesh.node.services["web-h2"].address, 30)
    assert {answer["client_id"] for answer in answers} == {CLIENT_ID}
    assert {answer["pod"] for answer in answers} == {"web-0", "web-1", "web-2"}


def test_unmeshed_client_reaches_meshed_server_in_plaintext(mesh: Mesh) -> None:
    """And cannot claim an identity: a forged meshlet-client-id never reaches the app."""
    address = mesh.node.services["web"].address
    before = [scrape(member.pod) for member in mesh.web]
    for _ in range(6):
        status, body = _raw_get(mesh.outside.pod, address, "/", "meshlet-client-id: forged\r\n")
        assert status == 200
        assert json.loads(body)["client_id"] is None
    after = [scrape(member.pod) for member in mesh.web]
    plaintext = sum(
        _delta(old, new, "request_total", direction="inbound", tls="no_identity")
        for old, new in zip(before, after, strict=True)
    )
    assert plaintext == 6


def test_meshed_client_reaches_unmeshed_server(mesh: Mesh) -> None:
    answers = [_get(mesh, "plain", "/plain") for _ in range(5)]
    assert _failures(answers) == []
    assert {answer.pod for answer in answers} == {"outside"}


def test_peer_with_another_identity_is_refused(mesh: Mesh) -> None:
    """Discovery promises web's identity at the impostor's address; its certificate says
    "other": the client's proxy refuses the connection, the impostor's app gets nothing."""
    before = scrape(mesh.impostor.pod)
    answers = [_get(mesh, "fake", "/steal") for _ in range(3)]
    for answer in answers:
        assert answer.status is not None, answer
        assert answer.status >= 500, answer
        assert answer.pod is None
    after = scrape(mesh.impostor.pod)
    assert _delta(before, after, "request_total", direction="inbound") == 0
    # Its own requests still work: it is a valid mesh member, just not "web".
    status, body = _raw_get(mesh.impostor.pod, mesh.node.services["web"].address, "/")
    assert status == 200
    assert json.loads(body)["client_id"] == workload_identity("other", "default")


def _opaque_echo(mesh: Mesh, service: str, server: MeshPod) -> None:
    before = scrape(server.pod)
    payload = os.urandom(200_000)
    with mesh.client.pod.connect(mesh.node.services[service].address, timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        echoed = b""
        while chunk := sock.recv(65536):
            echoed += chunk
    assert echoed == payload
    after = scrape(server.pod)
    accepted = {"direction": "inbound", "peer": "src", "tls": "true", "client_id": CLIENT_ID}
    assert _delta(before, after, "tcp_open_total", **accepted) == 1


def test_opaque_tcp_on_a_default_opaque_port_is_mtls(mesh: Mesh) -> None:
    """3306 is opaque by default on both proxies; discovery gives no hint (no annotation)."""
    _opaque_echo(mesh, "db", mesh.web[0])


def test_opaque_tcp_on_an_annotated_opaque_port_is_mtls(mesh: Mesh) -> None:
    """Discovery hints "opaque" (with the transport port): the client proxy uses it."""
    _opaque_echo(mesh, "db-annotated", mesh.web[1])


def test_service_without_endpoints_fails_fast_with_503(mesh: Mesh) -> None:
    address = mesh.node.services["empty"].address
    with mesh.client.pod.connect(address, timeout=15) as sock:
        host = f"{address[0]}:{address[1]}"
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 503"), head
    assert "meshlet-proxy-error: " in head, head


def test_traffic_shifts_away_from_a_slow_pod(mesh: Mesh) -> None:
    slow = mesh.web[1]
    os.kill(slow.apps[0].pid, signal.SIGUSR1)
    try:
        with HttpLoad(mesh.client.pod, mesh.node.services["web"].address, workers=4) as load:
            time.sleep(3)  # peak-EWMA learns the latency
            measured = time.monotonic()
            time.sleep(5)
            outcomes = load.since(measured)
    finally:
        os.kill(slow.apps[0].pid, signal.SIGUSR2)
    assert _failures(outcomes) == []
    served = Counter(outcome.pod for outcome in outcomes)
    # Unbalanced (round robin or random), the slow pod would get a third of the requests.
    assert served[slow.name] < 0.1 * len(outcomes), served
    assert served["web-0"] > 0, served
    assert served["web-2"] > 0, served


def test_endpoint_removed_then_pod_killed_under_load(mesh: Mesh) -> None:
    node = mesh.node
    churn = [node.add_pod(f"churn-{i}", serviceaccount="churn") for i in range(3)]
    for member in churn:
        node.start_app(member)
    service = node.add_service("churn", 80, churn, profile_routes=RETRY_GETS)
    node.wait_ready(churn)
    node.wait_discovered()
    posts = HttpLoad(mesh.client.pod, service.address, workers=2, method="POST", path="/post")
    with HttpLoad(mesh.client.pod, service.address, workers=4) as load, posts:
        time.sleep(2)
        service.endpoints.remove(churn[0])
        node.publish()
        removed = time.monotonic()
        time.sleep(3)
        killing = time.monotonic()
        node.kill_pod(churn[1])
        killed = time.monotonic()
        time.sleep(4)
        outcomes = load.stop()
        post_outcomes = posts.stop()
    assert _failures(outcomes) == [], _failures(outcomes)[:5]
    # POSTs are not retryable: they may fail only when in flight on the killed pod.
    for failed in _failures(post_outcomes):
        assert failed.started <= killed, failed
        assert failed.started + failed.seconds >= killing, failed
    assert len(post_outcomes) > 50
    assert len(outcomes) > 200
    served_before = Counter(o.pod for o in outcomes if o.started < removed)
    assert set(served_before) == {"churn-0", "churn-1", "churn-2"}, served_before
    # Discovery is polled every 100 ms and streamed at once; a second is plenty to drain.
    late = Counter(o.pod for o in outcomes if o.started > removed + 1)
    assert "churn-0" not in late, late
    after_kill = Counter(o.pod for o in outcomes if o.started > killed + 1)
    assert set(after_kill) == {"churn-2"}, after_kill


def test_destination_restart_under_load(mesh: Mesh) -> None:
    node = mesh.node
    with HttpLoad(mesh.client.pod, node.services["web"].address, workers=4) as load:
        time.sleep(1)
        node.stop_destination()
        time.sleep(2)
        node.start_destination()
        time.sleep(2)
        outcomes = load.stop()
    assert _failures(outcomes) == [], _failures(outcomes)[:5]
    assert {o.pod for o in outcomes} == {"web-0", "web-1", "web-2"}
    # Discovery works again after the restart: a new Service resolves through it.
    fresh = node.add_service("fresh", 80, [mesh.web[2]])
    # Until the destination has read its file (polled every 100 ms) the VIP is unknown to it,
    # and the proxy sends to the original destination in plaintext, as for any unknown address.
    deadline = time.monotonic() + 10
    while True:
        status, body = _raw_get(mesh.client.pod, fresh.address, "/fresh")
        assert status == 200
        if json.loads(body)["client_id"] == CLIENT_ID or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert json.loads(body) == {"pod": "web-2", "path": "/fresh", "client_id": CLIENT_ID}
