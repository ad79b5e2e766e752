"""The demo's application, deployed on a mesh node: a web front end, two back ends, a load
generator, each a Deployment's pod in namespace ``demo``, each meshed.

    loadgen ──HTTP/1.1──▶ web ──HTTP/1.1──▶ books      (mesh_app.py)
                           └───gRPC────▶ authors    (grpc_app.py, meshlet.test.Echo/Unary)

Every workload has its own ServiceAccount (so its own mTLS identity) and, but for the load
generator, a ClusterIP Service (the node's DNAT and discovery both know it). Applications run
as ``nobody``; the pods' proxies as UID 2102.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from meshlet.localmesh import frontend, grpc_app, loadgen
from meshlet.localmesh.meshnode import MeshNode, MeshPod, MeshService
from meshlet.localmesh.netns import Process
from meshlet.localmesh.programs import PYTHON, start_program
from meshlet.metricsource import AdminTarget
from meshlet.names import PROXY_ADMIN_PORT, workload_identity

__all__ = ["APP_UID", "EDGES", "NAMESPACE", "WORKLOADS", "Bookshop", "Workload"]

NAMESPACE: Final = "demo"
APP_UID: Final = 65534  # nobody
_APP_PORT: Final = 8080
_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses in generated names


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    service_port: int | None  # None: no Service (nothing calls it)
    what: str

    @property
    def identity(self) -> str:
        return workload_identity(self.name, NAMESPACE)

    def pod_name(self) -> tuple[str, str]:
        """``(replicaset, pod)`` names as a Deployment's controllers make them (stable here)."""
        digest = zlib.crc32(self.name.encode())
        letters = "".join(_ALPHABET[(digest >> (3 * i)) % len(_ALPHABET)] for i in range(10))
        replicaset = f"{self.name}-{letters[:9]}"
        return replicaset, f"{replicaset}-{letters[5:]}"


WORKLOADS: Final = (
    Workload("books", 80, "HTTP/1.1 back end (mesh_app.py)"),
    Workload("authors", 9090, "gRPC back end (grpc_app.py, grpcio)"),
    Workload("web", 80, "front end: asks books over HTTP/1.1 and authors over gRPC"),
    Workload("loadgen", None, "load generator: GETs to web at a fixed rate"),
)
EDGES: Final = (("loadgen", "web"), ("web", "books"), ("web", "authors"))
"""Who calls whom: every one of these must be mTLS with both workloads' identities."""


class Bookshop:
    """The four pods on ``mesh``; ``deploy()`` starts them, ``start_load()`` the traffic."""

    def __init__(self, mesh: MeshNode) -> None:
        self.mesh = mesh
        self.pods: dict[str, MeshPod] = {}
        self.services: dict[str, MeshService] = {}

    def deploy(self, say: Callable[[str], None]) -> None:
        """Mesh every pod (its injection, proxy-init, proxy), publish the Services, wait until
        every proxy holds a certificate and discovery serves every Service, start the apps."""
        for workload in WORKLOADS:
            replicaset, pod_name = workload.pod_name()
            ports = () if workload.service_port is None else (_APP_PORT,)
            member = self.mesh.add_pod(
                pod_name,
                serviceaccount=workload.name,
                namespace=NAMESPACE,
                ports=ports,
                replicaset=replicaset,
            )
            self.pods[workload.name] = member
            say(
                f"pod {NAMESPACE}/{pod_name} ({member.pod.ip}): injected, proxy-init rules "
                f"installed, meshlet-proxy running as UID 2102 ({workload.what})"
            )
        for workload in WORKLOADS:
            if workload.service_port is not None:
                member = self.pods[workload.name]
                self.services[workload.name] = service = self.mesh.add_service(
                    workload.name, workload.service_port, [member], namespace=NAMESPACE
                )
                say(
                    f"service {NAMESPACE}/{workload.name}: {service.service.vip}:"
                    f"{service.service.port} -> {member.pod.ip}:{_APP_PORT}"
                )
        self.mesh.wait_ready(list(self.pods.values()), timeout=60)
        say("every proxy is ready: each holds a certificate for its pod's identity")
        self.mesh.wait_discovered(timeout=20)
        say("meshlet-destination serves every Service's endpoints")
        self.mesh.start_app(self.pods["books"], _APP_PORT, uid=APP_UID)
        self._start("authors", [PYTHON, str(grpc_app.__file__), "serve", str(_APP_PORT)])
        books, authors = self.services["books"].service, self.services["authors"].service
        self._start(
            "web",
            [
                *(PYTHON, str(frontend.__file__), str(_APP_PORT)),
                f"{books.vip}:{books.port}",
                f"{authors.vip}:{authors.port}",
            ],
        )
        say("applications started (as nobody): books, authors, web")

    def _start(self, name: str, argv: list[str]) -> Process:
        member = self.pods[name]
        process = start_program(member.pod, argv, uid=APP_UID, timeout=30)
        member.apps.append(process)
        return process

    def start_load(self, rps: float, max_seconds: float) -> Process:
        web = self.services["web"].service
        argv = [PYTHON, str(loadgen.__file__), f"{web.vip}:{web.port}", f"{rps:g}"]
        return self._start("loadgen", [*argv, f"{max_seconds:g}"])

    def admin_targets(self) -> list[AdminTarget]:
        """Every proxy's admin address (reachable from the node namespace)."""
        return [
            AdminTarget(address=f"{member.pod.ip}:{PROXY_ADMIN_PORT}")
            for member in self.pods.values()
        ]
