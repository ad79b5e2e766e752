"""A small Kubernetes-like "node" made of network namespaces.

Layout (all of it inside namespaces this harness creates; the machine's own network namespace
is never configured, so nothing here can reach or be reached from the machine's network):

    node namespace: bridge br0 = 10.244.0.1/24, forwarding on, kube-proxy-style DNAT for
                    Service VIPs (10.96.0.0/16) in its nat PREROUTING
    pod namespaces: eth0 = 10.244.0.N/32, default route via 10.244.0.1; the other end of the
                    veth (vethN) is a port of br0 in the node namespace

Pods get /32 addresses and route everything through the node, like most CNI plugins: a
connection to a Service VIP is DNATed by the node and its replies come back through the node,
so connection tracking sees both directions (with a shared /24 the server would answer the
client directly, bypassing the node's reverse NAT, and the client would reset the connection).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final

from meshlet.localmesh.netns import LocalMeshError, Netns

__all__ = ["BRIDGE_MAC", "GATEWAY", "POD_SUBNET", "SERVICE_SUBNET", "Node", "Pod", "Service"]

POD_SUBNET: Final = ipaddress.ip_network("10.244.0.0/24")
SERVICE_SUBNET: Final = ipaddress.ip_network("10.96.0.0/16")
GATEWAY: Final = "10.244.0.1"
BRIDGE_MAC: Final = "02:00:0a:f4:00:01"  # locally administered, fixed


class Pod(Netns):
    """A pod: a namespace with one address (``pod.spawn``, ``pod.connect``, ``pod.run``...)."""

    def __init__(self, pod_name: str, ip: str) -> None:
        super().__init__(pod_name)
        self.pod_name = pod_name
        self.ip = ip


@dataclass(frozen=True)
class Service:
    """A ClusterIP Service: ``vip:port`` DNATed by the node to ``target_port`` on the pods."""

    name: str
    vip: str
    port: int
    target_port: int
    endpoints: tuple[str, ...]


@dataclass
class Node:
    """The node namespace, its pods and services; ``close()`` removes all of them."""

    netns: Netns = field(default_factory=lambda: Netns("node"))
    pods: dict[str, Pod] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.netns.ip_batch(
                [
                    # A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, so each
                    # new pod could change the gateway's MAC under the pods already there (their
                    # ARP entries go stale and their connections stall for seconds).
                    f"link add br0 address {BRIDGE_MAC} type bridge",
                    f"addr add {GATEWAY}/{POD_SUBNET.prefixlen} dev br0",
                    "link set br0 up",
                ]
            )
            self.netns.sysctl(
                {
                    "net.ipv4.ip_forward": "1",
                    # The node routes pod-to-pod traffic back out of br0; redirects would tell
                    # pods to bypass it (and its Service NAT).
                    "net.ipv4.conf.all.send_redirects": "0",
                    "net.ipv4.conf.default.send_redirects": "0",
                    "net.ipv4.conf.br0.send_redirects": "0",
                }
            )
            self.netns.run(["iptables", "-t", "nat", "-N", "KUBE-SERVICES"])
            self.netns.run(["iptables", "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"])
        except BaseException:
            self.netns.delete()
            raise

    def add_pod(self, name: str) -> Pod:
        """A new pod namespace wired to the bridge, with the next free address."""
        if name in self.pods:
            raise LocalMeshError(f"pod {name!r} exists")
        index = len(self.pods) + 2
        ip = str(POD_SUBNET[index])
        self.pods[name] = pod = Pod(name, ip)
        host_side = f"veth{index}"
        self.netns.iproute(
            "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", pod.name
        )
        self.netns.ip_batch([f"link set {host_side} master br0", f"link set {host_side} up"])
        pod.ip_batch(
            [
                f"addr add {ip}/32 dev eth0",
                "link set eth0 up",
                f"route add {GATEWAY} dev eth0 scope link",
                f"route add default via {GATEWAY} dev eth0",
            ]
        )
        return pod

    def add_service(
        self, name: str, port: int, pods: list[Pod | str], target_port: int | None = None
    ) -> Service:
        """A Service VIP spreading new connections over ``pods`` like kube-proxy (iptables mode).

        An endpoint may also be a bare IP (say, of a pod that is gone), to show failures.
        """
        vip = str(SERVICE_SUBNET[len(self.services) + 10])
        target = port if target_port is None else target_port
        endpoints = tuple(pod if isinstance(pod, str) else pod.ip for pod in pods)
        service = Service(name, vip, port, target, endpoints)
        chain = f"KUBE-SVC-{name.upper()}"[:28]
        self.netns.run(["iptables", "-t", "nat", "-N", chain])
        self.netns.run(
            [
                *("iptables", "-t", "nat", "-A", "KUBE-SERVICES", "-d", f"{vip}/32", "-p", "tcp"),
                *("--dport", str(port), "-j", chain),
            ]
        )
        for index, endpoint in enumerate(service.endpoints):
            remaining = len(service.endpoints) - index
            chance = [] if remaining == 1 else ["-m", "statistic", "--mode", "random"]
            chance += [] if remaining == 1 else ["--probability", f"{1 / remaining:.5f}"]
            self.netns.run(
                [
                    *("iptables", "-t", "nat", "-A", chain, "-p", "tcp", *chance),
                    *("-j", "DNAT", "--to-destination", f"{endpoint}:{target}"),
                ]
            )
        self.services[name] = service
        return service

    def close(self) -> None:
        """Delete every pod (stopping its processes) and then the node; report all failures."""
        errors = []
        for pod in reversed(list(self.pods.values())):
            try:
                pod.delete()
            except LocalMeshError as exc:
                errors.append(str(exc))
        self.pods.clear()
        try:
            self.netns.delete()
        except LocalMeshError as exc:
            errors.append(str(exc))
        if errors:
            raise LocalMeshError("; ".join(errors))

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
