"""The proxy names its pod and workload on /metrics, from the variables the injector sets."""

from __future__ import annotations

from pathlib import Path

from meshlet.localmesh.kubelet import PodFacts, in_process_injector, pod_manifest, sidecar_settings
from meshlet.metricsread import parse_metrics
from proxy.metrics import Metrics
from proxy.settings import load_settings
from webhook.patch import Owner

MOUNTS = {
    "meshlet-identity-end-entity": Path("/tmp/p/identity"),
    "meshlet-identity-token": Path("/tmp/p/tokens"),
    "meshlet-proxy-init-xtables-lock": Path("/tmp/p/run"),
}
ANCHORS = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_info_gauge_is_rendered_with_escaped_labels() -> None:
    page = Metrics({"namespace": "demo", "pod": "web-1", "workload": 'we"b'}).render().decode()
    assert 'meshlet_proxy_info{namespace="demo",pod="web-1",workload="we\\"b"} 1\n' in page
    assert "# TYPE meshlet_proxy_info gauge" in page
    assert "meshlet_proxy_info" not in Metrics().render().decode()
    parse_metrics(page, None)  # still valid Prometheus text


def _env(replicaset: str | None) -> dict[str, str]:
    manifest = pod_manifest(
        name="web-5d8f7c9b6-x2x4z",
        namespace="demo",
        serviceaccount="web",
        ports=[8080],
        replicaset=replicaset,
    )
    owner = None if replicaset is None else Owner("deployment", "web")
    injected = in_process_injector(ANCHORS, owner=lambda m: owner)(manifest)
    facts = PodFacts("web-5d8f7c9b6-x2x4z", "demo", "10.244.0.9", "web")
    env, _ = sidecar_settings(injected, facts, MOUNTS, "10.244.0.1")
    return env


def test_the_injector_gives_the_proxy_its_workload() -> None:
    assert _env("web-5d8f7c9b6")["MESHLET_PROXY_WORKLOAD"] == "web"
    assert load_settings(_env("web-5d8f7c9b6")).workload == "web"


def test_a_bare_pod_is_its_own_workload() -> None:
    assert _env(None)["MESHLET_PROXY_WORKLOAD"] == "web-5d8f7c9b6-x2x4z"
