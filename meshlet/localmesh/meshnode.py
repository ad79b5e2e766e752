"""A mesh node: the control plane as real processes, and pods meshed the way the injector does it.

    node namespace:   meshlet-identity     on 10.244.0.1:8080 (local mode: a token file)
                      meshlet-destination  on 10.244.0.1:8086 (local mode: a YAML file that
                                           ``MeshNode.publish()`` writes from the test's pods)
    meshed pods:      meshlet-proxy-init with the init container's args, then meshlet-proxy as
                      UID 2102 with the env of the injected ``meshlet-proxy`` container

The proxy's environment is not written here: each pod's Pod manifest goes through an injector
(the webhook's own ``inject_pod`` in this process by default, or the running webhook) and
``meshlet.localmesh.kubelet`` resolves the injected containers as the kubelet would. So a
change in the injector's env contract shows up here.

Everything lives in one temporary directory (removed by ``close()``); processes are stopped by
PID when their namespace is deleted (``Node.close``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from destination.model import BadObject, parse_pod
from identity.cli import main as identity_cli
from meshlet.localmesh import mesh_app
from meshlet.localmesh.kubelet import (
    CLUSTER_DOMAIN,
    Injector,
    PodFacts,
    in_process_injector,
    pod_manifest,
    sidecar_settings,
)
from meshlet.localmesh.netns import LocalMeshError, Process
from meshlet.localmesh.node import GATEWAY, Node, Pod, Service
from meshlet.localmesh.programs import (
    DESTINATION_BIN,
    IDENTITY_BIN,
    PROXY,
    PYTHON,
    install_proxy_init,
    wait_proxy_ready,
)
from meshlet.names import (
    DESTINATION_PORT,
    IDENTITY_PORT,
    PROXY_UID,
    control_plane_identity,
    workload_identity,
)

__all__ = [
    "CLUSTER_DOMAIN",
    "MESH_APP",
    "MeshNode",
    "MeshPod",
    "MeshService",
    "pod_owner",
]

MESH_APP: Final = str(mesh_app.__file__)


@dataclass
class MeshPod:
    """A pod of the mesh node: meshed (``proxy`` set) or not, with its discovery facts."""

    pod: Pod
    namespace: str
    serviceaccount: str
    proxy: Process | None
    env: dict[str, str]
    apps: list[Process] = field(default_factory=list)
    opaque_ports: str | None = None  # the pod's config.meshlet.io/opaque-ports, for discovery
    owner: tuple[str, str] | None = None
    """(kind, name) from the pod's manifest as Kubernetes-mode discovery reads it (the injector's
    ``meshlet.io/proxy-<kind>`` label, else the controller reference), for ``dst_<kind>``."""

    @property
    def name(self) -> str:
        return self.pod.pod_name

    @property
    def identity(self) -> str:
        """The identity discovery gives this pod (from its ServiceAccount)."""
        return workload_identity(self.serviceaccount, self.namespace)


@dataclass
class MeshService:
    """A Service both kube-proxy (the node's DNAT) and discovery know; ``endpoints`` are what
    discovery lists (the test may change them and ``publish()``)."""

    service: Service
    namespace: str
    endpoints: list[MeshPod]
    profile_routes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.service.vip, self.service.port


def _run_identity_cli(argv: list[str]) -> str:
    out = io.StringIO()
    errors = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errors):
        status = identity_cli(argv)
    if status != 0:
        raise LocalMeshError(f"meshlet identity {' '.join(argv)}: {errors.getvalue().strip()}")
    return out.getvalue()


class MeshNode:
    """The node, the control plane in it, and the pods and services the test adds."""

    def __init__(self, node: Node, log_dir: Path, parent: Path | None = None) -> None:
        self.node = node
        self.log_dir = log_dir
        # Not under pytest's tmp dir: that is 0700 root, and the proxies (UID 2102) read here.
        # ``parent`` (default: the system's temporary directory) must let them through (o+x).
        self.dir = Path(tempfile.mkdtemp(prefix="mlt-mesh-", dir=parent))
        self.dir.chmod(0o711)
        self.pods: dict[str, MeshPod] = {}
        self.services: dict[str, MeshService] = {}
        self.identity: Process | None = None
        self.destination: Process | None = None
        try:
            self.pki = self.dir / "pki"
            _run_identity_cli(["init", "--dir", str(self.pki)])
            _run_identity_cli(
                ["issue", "destination", "--dir", str(self.pki), "--out", str(self.dir / "dst")]
            )
            self.trust_anchors = (self.pki / "ca-bundle.crt").read_text()
            # How pods are meshed; the demo swaps in the running webhook.
            self.injector: Injector = in_process_injector(self.trust_anchors)
            self.tokens = self.dir / "tokens.txt"
            self.tokens.write_text("# meshlet-e2e tokens\n")
            self.tokens.chmod(0o600)
            self.source = self.dir / "destination.yaml"
            self.publish()
            self.identity = node.netns.spawn(
                [IDENTITY_BIN],
                env={
                    "MESHLET_IDENTITY_LISTEN_ADDR": f"{GATEWAY}:{IDENTITY_PORT}",
                    "MESHLET_IDENTITY_ISSUER_CERT_FILE": str(self.pki / "crt.pem"),
                    "MESHLET_IDENTITY_ISSUER_KEY_FILE": str(self.pki / "key.pem"),
                    "MESHLET_IDENTITY_TRUST_ANCHORS_FILE": str(self.pki / "ca-bundle.crt"),
                    "MESHLET_IDENTITY_TOKEN_SOURCE": str(self.tokens),
                    "MESHLET_IDENTITY_RELOAD_INTERVAL": "1s",
                },
                capture=False,
                log_path=log_dir / "identity.log",
                label="meshlet-identity",
            )
            self.start_destination()
            node.netns.wait_for_port((GATEWAY, IDENTITY_PORT), timeout=20)
        except BaseException:
            self.close()
            raise

    # -- control plane ------------------------------------------------------------------------

    def start_destination(self) -> None:
        """Start (or start again) meshlet-destination and wait until it accepts connections."""
        self.destination = self.node.netns.spawn(
            [
                DESTINATION_BIN,
                *("--source", str(self.source)),
                *("--tls-cert-file", str(self.dir / "dst" / "tls.crt")),
                *("--tls-key-file", str(self.dir / "dst" / "tls.key")),
                *("--listen-addr", f"{GATEWAY}:{DESTINATION_PORT}"),
                *("--local-poll-interval", "100ms"),
                *("--keepalive-interval", "2s"),
            ],
            capture=False,
            log_path=self.log_dir / "destination.log",
            label="meshlet-destination",
        )
        self.node.netns.wait_for_port((GATEWAY, DESTINATION_PORT), timeout=20)

    def stop_destination(self) -> None:
        if self.destination is not None:
            self.destination.stop()

    def publish(self) -> None:
        """Write the destination's YAML from ``services`` (atomically: it polls the file)."""
        services = []
        profiles = []
        for mesh_service in self.services.values():
            service = mesh_service.service
            services.append(
                {
                    "name": service.name,
                    "namespace": mesh_service.namespace,
                    "clusterIP": service.vip,
                    "ports": [{"port": service.port, "targetPort": service.target_port}],
                    "endpoints": [_endpoint(member) for member in mesh_service.endpoints],
                }
            )
            if mesh_service.profile_routes:
                profiles.append(
                    {
                        "name": f"{service.name}.{mesh_service.namespace}.svc.{CLUSTER_DOMAIN}",
                        "namespace": mesh_service.namespace,
                        "routes": mesh_service.profile_routes,
                    }
                )
        staged = self.source.with_suffix(".new")
        staged.write_text(yaml.safe_dump({"services": services, "profiles": profiles}))
        staged.replace(self.source)

    def discovered(self, mesh_service: MeshService) -> set[str] | None:
        """The endpoint addresses meshlet-destination serves now for the Service's VIP (asked
        over its API like a proxy, TLS verified against the trust anchors); None while it does
        not know the Service."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca-bundle.crt"))
        vip, port = mesh_service.address
        with self.node.netns.connect((GATEWAY, DESTINATION_PORT), timeout=5) as raw:
            name = control_plane_identity("destination")
            with context.wrap_socket(raw, server_hostname=name) as sock:
                path = f"/v1/endpoints?authority={vip}:{port}"
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
                data = b""
                while (snapshot := _first_snapshot(data)) is None:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ValueError(f"no snapshot in {data[:300]!r}")
                    data += chunk
        if not snapshot.get("exists"):
            return None
        return {endpoint["address"] for endpoint in snapshot["endpoints"]}

    def wait_discovered(self, timeout: float = 10.0) -> None:
        """Wait until the destination serves every Service with the endpoints published (it
        polls its file): a proxy asking earlier would be told the VIP is unknown."""
        deadline = time.monotonic() + timeout
        for mesh_service in self.services.values():
            want = {member.pod.ip for member in mesh_service.endpoints}
            while (have := self._discovered_or_none(mesh_service)) != want:
                if time.monotonic() > deadline:
                    raise LocalMeshError(f"{mesh_service.service.name}: discovery has {have}")
                time.sleep(0.05)

    def _discovered_or_none(self, mesh_service: MeshService) -> set[str] | None:
        try:
            return self.discovered(mesh_service)
        except (OSError, ValueError, StopIteration):
            return None

    def add_token(self, namespace: str, serviceaccount: str) -> str:
        argv = ["token", "--file", str(self.tokens), "--namespace", namespace]
        return _run_identity_cli([*argv, "--serviceaccount", serviceaccount]).strip()

    # -- pods and services --------------------------------------------------------------------

    def add_pod(
        self,
        name: str,
        *,
        serviceaccount: str = "default",
        namespace: str = "default",
        ports: tuple[int, ...] = (8080,),
        meshed: bool = True,
        token_for: str | None = None,
        replicaset: str | None = None,
        proxy_env: dict[str, str] | None = None,
    ) -> MeshPod:
        """A pod; meshed ones get proxy-init and a proxy (not waited for: see ``wait_ready``),
        configured by what ``self.injector`` makes of the pod's manifest.

        ``token_for`` gives the pod the token of another ServiceAccount (so its certificate names
        that identity while discovery still derives its identity from ``serviceaccount``).
        ``replicaset`` makes the pod a Deployment's (its owner reference). ``proxy_env`` sets
        ``MESHLET_PROXY_*`` variables over the injected ones (a switch the injector does not write).
        """
        pod = self.node.add_pod(name)
        manifest = pod_manifest(
            name=name,
            namespace=namespace,
            serviceaccount=serviceaccount,
            ports=list(ports),
            replicaset=replicaset,
        )
        if not meshed:
            member = MeshPod(pod, namespace, serviceaccount, None, {}, owner=pod_owner(manifest))
            self.pods[name] = member
            return member
        home = self.dir / "pods" / name
        identity_dir = home / "identity"
        token_dir = home / "tokens"
        for path in (home, token_dir):
            path.mkdir(parents=True)
            path.chmod(0o711)
        identity_dir.mkdir(mode=0o700)
        os.chown(identity_dir, PROXY_UID, PROXY_UID)
        injected = self.injector(manifest)
        env, init_args = sidecar_settings(
            injected,
            PodFacts(name, namespace, pod.ip, serviceaccount),
            {
                "meshlet-identity-end-entity": identity_dir,
                "meshlet-identity-token": token_dir,
                "meshlet-proxy-init-xtables-lock": home / "run",
            },
            GATEWAY,
        )
        env.update(proxy_env or {})
        if token_for is not None:
            env["MESHLET_PROXY_IDENTITY_LOCAL_NAME"] = workload_identity(token_for, namespace)
        token_file = Path(env["MESHLET_PROXY_IDENTITY_TOKEN_FILE"])
        token_file.write_text(self.add_token(namespace, token_for or serviceaccount))
        token_file.chmod(0o400)
        os.chown(token_file, PROXY_UID, PROXY_UID)
        install_proxy_init(pod, *init_args)
        proxy = pod.spawn(
            [PROXY],
            uid=PROXY_UID,
            env=env,
            capture=False,
            log_path=self.log_dir / f"proxy-{name}.log",
            label=f"meshlet-proxy in {name}",
        )
        member = MeshPod(pod, namespace, serviceaccount, proxy, env, owner=pod_owner(injected))
        self.pods[name] = member
        return member

    def start_app(self, member: MeshPod, port: int = 8080, uid: int | None = None) -> Process:
        """``mesh_app.py`` in the pod (it names the pod in every answer)."""
        process = member.pod.spawn(
            [PYTHON, MESH_APP, member.name, str(port)], uid=uid, label=f"{member.name}: mesh_app"
        )
        line = process.read_line(timeout=20)
        if line != "ready":
            raise LocalMeshError(f"{process.label} said {line!r}")
        member.apps.append(process)
        return process

    def add_service(
        self,
        name: str,
        port: int,
        members: list[MeshPod],
        *,
        target_port: int = 8080,
        namespace: str = "default",
        profile_routes: list[dict[str, Any]] | None = None,
    ) -> MeshService:
        """A Service in the node's NAT (kube-proxy) and in discovery (published at once)."""
        service = self.node.add_service(name, port, [m.pod for m in members], target_port)
        mesh_service = MeshService(service, namespace, list(members), profile_routes or [])
        self.services[name] = mesh_service
        self.publish()
        return mesh_service

    def wait_ready(self, members: list[MeshPod], timeout: float = 30.0) -> None:
        """Wait until every meshed pod's proxy answers ``/ready`` 200 (with TLS: holds a cert)."""
        deadline = time.monotonic() + timeout
        for member in members:
            if member.proxy is not None:
                wait_proxy_ready(member.pod, member.proxy, deadline)

    def kill_pod(self, member: MeshPod) -> None:
        """What a node losing a pod looks like: its processes die at once (SIGKILL)."""
        for process in [*member.apps, *([member.proxy] if member.proxy else [])]:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(5)

    def close(self) -> None:
        """Remove the temporary directory (processes go with the node's namespaces)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def _first_snapshot(data: bytes) -> dict[str, Any] | None:
    """The first complete ``snapshot`` line of an NDJSON answer (chunk-size lines skipped)."""
    for raw in data.partition(b"\r\n\r\n")[2].split(b"\n"):
        line = raw.strip()
        if line.startswith(b"{") and line.endswith(b"}") and b'"snapshot"' in line:
            decoded = json.loads(line)
            if isinstance(decoded, dict):
                return decoded
    return None


def pod_owner(manifest: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of a Pod manifest's owner, as Kubernetes-mode discovery derives it."""
    pod = parse_pod(manifest)
    return None if isinstance(pod, BadObject) else pod.owner


def _endpoint(member: MeshPod) -> dict[str, Any]:
    endpoint: dict[str, Any] = {
        "address": member.pod.ip,
        "pod": member.name,
        "serviceAccount": member.serviceaccount,
        "meshed": member.proxy is not None,
    }
    if member.owner is not None:
        endpoint["owner"] = {"kind": member.owner[0], "name": member.owner[1]}
    if member.opaque_ports is not None:
        endpoint["opaquePorts"] = member.opaque_ports
    return endpoint
