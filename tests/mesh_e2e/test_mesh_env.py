"""The mesh node's proxy environment is the injector's (no root needed)."""

from __future__ import annotations

from pathlib import Path

from meshlet.localmesh.kubelet import in_process_injector, pod_manifest
from meshlet.localmesh.meshnode import pod_owner
from meshlet.names import DESTINATION_PORT, IDENTITY_PORT, control_plane_identity
from tests.harness.mesh_node import injected_env
from tests.harness.node import GATEWAY
from webhook.config import ProxyConfig
from webhook.patch import MeshParams, Owner, inject_pod

ANCHORS = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
MOUNTS = {
    "meshlet-identity-end-entity": Path("/tmp/pod/identity"),
    "meshlet-identity-token": Path("/tmp/pod/tokens"),
    "meshlet-proxy-init-xtables-lock": Path("/tmp/pod/run"),
}


def _env() -> tuple[dict[str, str], list[str]]:
    return injected_env(
        name="web-0",
        namespace="shop",
        serviceaccount="web",
        pod_ip="10.244.0.7",
        ports=[8080, 9090],
        trust_anchors=ANCHORS,
        mounts=MOUNTS,
    )


def test_env_has_exactly_the_injected_variables() -> None:
    env, _ = _env()
    pod = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a", "image": "a"}]}}
    mesh = MeshParams("meshlet", "cluster.local", "cluster.local", ANCHORS, None, "t")
    injected = inject_pod(pod, namespace="shop", config=ProxyConfig(), mesh=mesh, owner=None)
    proxy = next(c for c in injected["spec"]["initContainers"] if c["name"] == "meshlet-proxy")
    assert list(env) == [item["name"] for item in proxy["env"]]


def test_env_is_resolved_as_the_kubelet_would() -> None:
    env, init_args = _env()
    assert env["MESHLET_PROXY_POD_NAME"] == "web-0"
    assert env["MESHLET_PROXY_POD_NAMESPACE"] == "shop"
    assert env["MESHLET_PROXY_POD_IP"] == "10.244.0.7"
    assert env["MESHLET_PROXY_SERVICE_ACCOUNT"] == "web"
    assert env["MESHLET_PROXY_INBOUND_PORTS"] == "8080,9090"
    assert (
        env["MESHLET_PROXY_IDENTITY_LOCAL_NAME"]
        == "web.shop.serviceaccount.identity.meshlet.cluster.local"
    )
    assert env["MESHLET_PROXY_IDENTITY_TRUST_ANCHORS"] == ANCHORS
    assert env["MESHLET_PROXY_IDENTITY_DIR"] == "/tmp/pod/identity"
    assert env["MESHLET_PROXY_IDENTITY_TOKEN_FILE"] == "/tmp/pod/tokens/meshlet-identity-token"
    assert env["MESHLET_PROXY_IDENTITY_SVC_ADDR"] == f"{GATEWAY}:{IDENTITY_PORT}"
    assert env["MESHLET_PROXY_DESTINATION_SVC_ADDR"] == f"{GATEWAY}:{DESTINATION_PORT}"
    assert env["MESHLET_PROXY_IDENTITY_SVC_NAME"] == control_plane_identity("identity")
    assert env["MESHLET_PROXY_DESTINATION_SVC_NAME"] == control_plane_identity("destination")
    assert not any("$(" in value for value in env.values())
    assert init_args[:2] == ["--incoming-proxy-port", "4143"]
    assert "--proxy-uid" in init_args


def test_discovery_names_the_pods_own_owner_not_a_service() -> None:
    """The local destination's endpoint owner is read off the pod's injected manifest the way
    Kubernetes-mode discovery reads a Pod, so a pod behind two Services has one deployment."""
    injector = in_process_injector(ANCHORS, owner=lambda _: Owner("deployment", "reviews"))
    manifest = pod_manifest(
        name="reviews-5d8f7-x2k4p",
        namespace="shop",
        serviceaccount="reviews",
        ports=[8080],
        replicaset="reviews-5d8f7",
    )
    assert pod_owner(injector(manifest)) == ("deployment", "reviews")
    # Unmeshed: the controller reference alone (a ReplicaSet without its template hash label).
    assert pod_owner(manifest) == ("replicaset", "reviews-5d8f7")
    bare = pod_manifest(name="solo", namespace="shop", serviceaccount="x", ports=[80])
    assert pod_owner(bare) is None
