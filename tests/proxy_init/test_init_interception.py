"""Interception really works: real rules, real connections, and SO_ORIGINAL_DST tells the truth.

One node, three pods (built once for the module):

    client  meshlet-proxy-init --outbound-ports-to-ignore 9090 --subnets-to-ignore <outside>/32
            --proxy-gid 2103; the reporter plays the proxy on 127.0.0.1:4140 and 0.0.0.0:4143
            and an application on 127.0.0.1:8081 and 0.0.0.0:8082
    server  meshlet-proxy-init --inbound-ports-to-ignore 9090; the reporter plays the proxy on
            4143/4140 and the application on 8080, 9090, and the admin port 4191
    outside no rules; an application on 8080

    Service web 10.96.0.10:80 -> server:8080, Service metrics 10.96.0.11:9090 -> server:9090

Each row connects from a pod, as some user, to an address, and names the listener that must
receive the connection and the original destination the kernel must report there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from socket import SOCK_DGRAM

import pytest

from tests.harness import Node, ask, ask_here, install_proxy_init, start_reporter

pytestmark = pytest.mark.root

PROXY_UID = 2102
PROXY_GID = 2103


@dataclass
class Topology:
    node: Node
    addresses: dict[str, str]

    def resolve(self, target: str) -> tuple[str, int]:
        """``"server:8080"`` / ``"web"`` / ``"127.0.0.1:8081"`` to an address."""
        name, _, port = target.partition(":")
        if name in self.node.services:
            service = self.node.services[name]
            return service.vip, service.port
        return self.addresses.get(name, name), int(port)


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    node = Node()
    try:
        client, server, outside = (node.add_pod(name) for name in ("client", "server", "outside"))
        node.add_service("web", 80, [server], target_port=8080)
        node.add_service("metrics", 9090, [server])
        install_proxy_init(
            client,
            *("--outbound-ports-to-ignore", "9090", "--proxy-gid", str(PROXY_GID)),
            *("--subnets-to-ignore", f"{outside.ip}/32"),
        )
        install_proxy_init(server, "--inbound-ports-to-ignore", "9090")
        start_reporter(client, "127.0.0.1:4140", "0.0.0.0:4143", "127.0.0.1:8081", "0.0.0.0:8082")
        start_reporter(
            server, "127.0.0.1:4140", "0.0.0.0:4143", "0.0.0.0:8080", "0.0.0.0:9090", "0.0.0.0:4191"
        )
        start_reporter(outside, "0.0.0.0:8080")
        addresses = {pod.pod_name: pod.ip for pod in node.pods.values()}
        yield Topology(node, addresses)
    finally:
        node.close()


@dataclass(frozen=True)
class Row:
    source: str
    target: str
    listener: int
    original: str
    uid: int | None = None
    gid: int | None = None


ROWS = [
    # Outbound: the application's connections go to the proxy's 4140, with the true destination.
    pytest.param(Row("client", "web", 4140, "web"), id="outbound/service-vip"),
    pytest.param(Row("client", "server:8080", 4140, "server:8080"), id="outbound/pod-ip"),
    # (the outside pod has no nat rules, so its kernel tracks no NAT: nothing to report there)
    pytest.param(
        Row("client", "outside:8080", 8080, "error:no_conntrack_entry"), id="outbound/skip-subnet"
    ),
    pytest.param(Row("client", "metrics", 9090, "server:9090"), id="outbound/skip-port"),
    pytest.param(
        Row("client", "127.0.0.1:8081", 8081, "127.0.0.1:8081"),
        id="outbound/loopback-not-redirected",
    ),
    pytest.param(
        Row("client", "client:8082", 8082, "client:8082"), id="outbound/own-pod-ip-via-lo"
    ),
    # The proxy's own connections (UID 2102, or the proxy GID) leave the pod untouched; the
    # server pod's inbound rule then takes them, and the node's Service DNAT is visible there.
    pytest.param(
        Row("client", "web", 4143, "server:8080", uid=PROXY_UID), id="proxy-uid/not-redirected"
    ),
    pytest.param(
        Row("client", "web", 4143, "server:8080", uid=1000, gid=PROXY_GID),
        id="proxy-gid/not-redirected",
    ),
    pytest.param(Row("client", "web", 4140, "web", uid=1000, gid=1000), id="other-user/redirected"),
    # Inbound: connections into a meshed pod go to the proxy's 4143, except skipped ports.
    pytest.param(Row("outside", "server:8080", 4143, "server:8080"), id="inbound/app-port"),
    pytest.param(Row("outside", "web", 4143, "server:8080"), id="inbound/via-service"),
    pytest.param(Row("outside", "server:9090", 9090, "server:9090"), id="inbound/skip-port"),
    pytest.param(Row("outside", "server:4191", 4191, "server:4191"), id="inbound/admin-port"),
    pytest.param(
        Row("server", "client:8082", 4143, "client:8082", uid=PROXY_UID), id="inbound/other-pod"
    ),
    pytest.param(Row("outside", "client:8082", 8082, "client:8082"), id="inbound/skip-subnet"),
]


@pytest.mark.parametrize("row", ROWS)
def test_interception(topology: Topology, row: Row) -> None:
    pod = topology.node.pods[row.source]
    host, port = topology.resolve(row.target)
    if row.uid is None:
        answer = ask_here(pod, host, port)  # as root, from the test process
    else:
        answer = ask(pod, host, port, uid=row.uid, gid=row.gid)
    assert isinstance(answer, dict), answer
    assert answer["listener"] == row.listener
    if row.original.startswith("error:"):
        assert answer["original"] == row.original
    else:
        original_host, original_port = topology.resolve(row.original)
        assert answer["original"] == f"{original_host}:{original_port}"
    if row.source != "client" or row.uid is not None:
        # Seen from the far side, the connection comes from the source pod's own address.
        assert str(answer["peer"]).split(":")[0] == topology.addresses[row.source]


def test_udp_is_not_redirected(topology: Topology) -> None:
    """The rules are TCP only: a UDP datagram to the Service's pod is delivered as sent."""
    client = topology.node.pods["client"]
    server = topology.node.pods["server"]
    with server.socket(kind=SOCK_DGRAM) as receiver, client.socket(kind=SOCK_DGRAM) as sender:
        receiver.bind(("0.0.0.0", 5353))
        receiver.settimeout(2)
        sender.sendto(b"ping", (server.ip, 5353))
        data, peer = receiver.recvfrom(16)
    assert (data, peer[0]) == (b"ping", client.ip)


def test_ipv6_outbound_interception(node: Node) -> None:
    """``--ipv6`` rules redirect to [::1]:4140 and IP6T_SO_ORIGINAL_DST reports the target."""
    pod = node.add_pod("v6")
    pod.iproute("addr", "add", "fd00::2/64", "dev", "eth0", "nodad")
    install_proxy_init(pod, "--ipv6")
    start_reporter(pod, "[::1]:4140", "[::]:8080")
    answer = ask(pod, "fd00::99", 80)
    assert isinstance(answer, dict), answer
    assert (answer["listener"], answer["original"]) == (4140, "[fd00::99]:80")
    assert answer["peer"].startswith("[fd00::2]:")
    direct = ask(pod, "::1", 8080)  # loopback stays direct
    assert isinstance(direct, dict), direct
    assert (direct["listener"], direct["original"]) == (8080, "[::1]:8080")
