"""The checks of ``meshlet check``, as pure functions over what was read from the cluster.

Each function takes plain Kubernetes objects (dicts, as the API returns them) and returns
``CheckResult``s, so every pass and failure is tested without a cluster.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

from meshlet import __version__
from meshlet.check.model import CheckResult, Status
from meshlet.names import PROXY_CONTAINER_NAME

__all__ = [
    "CONTROL_PLANE_COMPONENTS",
    "INSTALL_PERMISSIONS",
    "MIN_KUBERNETES",
    "check_control_plane_pods",
    "check_issuer",
    "check_permissions",
    "check_proxies",
    "check_version",
    "check_webhook",
]

Object = Mapping[str, Any]
MIN_KUBERNETES = (1, 28)
CONTROL_PLANE_COMPONENTS = ("identity", "destination", "webhook")
EXPIRY_WARNING = datetime.timedelta(days=60)
# (verb, API group, resource) an installer must be allowed, as `kubectl apply -k` needs them.
INSTALL_PERMISSIONS = tuple(
    ("create", group, resource)
    for group, resource in [
        ("", "namespaces"),
        ("", "serviceaccounts"),
        ("", "services"),
        ("", "secrets"),
        ("", "configmaps"),
        ("apps", "deployments"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    ]
)


def check_version(version: Object) -> CheckResult:
    category = "kubernetes-version"
    try:
        major = int(str(version["major"]).rstrip("+"))
        minor = int(str(version["minor"]).rstrip("+"))
    except (KeyError, ValueError):
        return CheckResult(
            category, "can read the API server version", Status.FAIL, f"unexpected answer {version}"
        )
    text = f"{major}.{minor}"
    if (major, minor) < MIN_KUBERNETES:
        need = ".".join(map(str, MIN_KUBERNETES))
        return CheckResult(
            category,
            "is running the minimum Kubernetes API version",
            Status.FAIL,
            f"the API server is {text}",
            f"meshlet needs Kubernetes {need} or later",
        )
    return CheckResult(category, "is running the minimum Kubernetes API version", Status.OK, text)


def check_permissions(allowed: Mapping[tuple[str, str, str], bool]) -> list[CheckResult]:
    results = []
    for verb, group, resource in INSTALL_PERMISSIONS:
        kind = f"{resource}.{group}" if group else resource
        ok = allowed.get((verb, group, resource), False)
        results.append(
            CheckResult(
                "pre-kubernetes-setup",
                f"can {verb} {kind}",
                Status.OK if ok else Status.FAIL,
                hint="" if ok else f"ask an administrator for '{verb}' on {kind} (RBAC)",
            )
        )
    return results


def _ready(pod: Object, container: str | None = None) -> bool:
    status = pod.get("status") or {}
    if container is None:
        conditions = status.get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    return any(s.get("name") == container and s.get("ready") is True for s in statuses)


def check_control_plane_pods(pods: Iterable[Object]) -> list[CheckResult]:
    by_component: dict[str, list[Object]] = {name: [] for name in CONTROL_PLANE_COMPONENTS}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        component = labels.get("meshlet.io/control-plane-component")
        if component in by_component:
            by_component[component].append(pod)
    results = []
    for component, members in by_component.items():
        ready = sum(1 for pod in members if _ready(pod))
        name = f"meshlet-{component} pods are ready"
        if ready:
            results.append(
                CheckResult("control-plane", name, Status.OK, f"{ready}/{len(members)} ready")
            )
        else:
            detail = "no pods found" if not members else f"0/{len(members)} ready"
            selector = f"meshlet.io/control-plane-component={component}"
            hint = f"kubectl -n meshlet describe pods -l {selector}"
            results.append(CheckResult("control-plane", name, Status.FAIL, detail, hint))
    return results


def _pem_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    key = parent.public_key()
    hash_algorithm = child.signature_hash_algorithm
    if hash_algorithm is None or child.issuer != parent.subject:
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, PKCS1v15(), hash_algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _secret_file(secret: Object | None, key: str) -> bytes:
    if secret is None:
        return b""
    encoded = (secret.get("data") or {}).get(key, "")
    try:
        return base64.b64decode(encoded)
    except ValueError:
        return b""


def check_webhook(configuration: Object | None, serving_secret: Object | None) -> list[CheckResult]:
    category = "webhook"
    if configuration is None:
        return [
            CheckResult(
                category,
                "the injector webhook is registered",
                Status.FAIL,
                "MutatingWebhookConfiguration meshlet-webhook not found",
                "kubectl apply -k manifests/overlays/default",
            )
        ]
    results = [CheckResult(category, "the injector webhook is registered", Status.OK)]
    webhooks = configuration.get("webhooks") or [{}]
    bundle = base64.b64decode((webhooks[0].get("clientConfig") or {}).get("caBundle") or "")
    anchors = _pem_certificates(bundle)
    served = _pem_certificates(_secret_file(serving_secret, "tls.crt"))
    name = "the webhook's caBundle matches the certificate it serves"
    if not anchors:
        results.append(CheckResult(category, name, Status.FAIL, "the caBundle is empty or not PEM"))
    elif not served:
        results.append(
            CheckResult(
                category,
                name,
                Status.WARN,
                "the serving certificate Secret was not found or is not readable",
                "kubectl -n meshlet get secrets",
            )
        )
    elif any(served[0] == anchor or _signed_by(served[0], anchor) for anchor in anchors):
        results.append(CheckResult(category, name, Status.OK))
    else:
        results.append(
            CheckResult(
                category,
                name,
                Status.FAIL,
                "the API server would reject the webhook's certificate",
                "re-render and apply the manifests so the caBundle and the Secret agree",
            )
        )
    return results


def _expiry(
    category: str, label: str, certificate: x509.Certificate, now: datetime.datetime
) -> CheckResult:
    left = certificate.not_valid_after_utc - now
    name = f"the {label} is valid for at least 60 days"
    until = certificate.not_valid_after_utc.strftime("%Y-%m-%d")
    if left <= datetime.timedelta(0):
        return CheckResult(
            category, name, Status.FAIL, f"expired on {until}", "meshlet identity init; re-apply"
        )
    if left < EXPIRY_WARNING:
        return CheckResult(
            category, name, Status.WARN, f"expires on {until}", "rotate it before it expires"
        )
    return CheckResult(category, name, Status.OK, f"expires on {until}")


def check_issuer(
    issuer_secret: Object | None, anchors_config_map: Object | None, now: datetime.datetime
) -> list[CheckResult]:
    """The issuer Secret (``crt.pem``) against the trust anchors ConfigMap (``ca-bundle.crt``),
    as ``meshlet identity init`` writes them."""
    category = "identity"
    issuers = _pem_certificates(_secret_file(issuer_secret, "crt.pem"))
    anchor_text = str(((anchors_config_map or {}).get("data") or {}).get("ca-bundle.crt", ""))
    anchors = _pem_certificates(anchor_text.encode())
    if not issuers or not anchors:
        return [
            CheckResult(
                category,
                "the issuer and trust anchors are present",
                Status.FAIL,
                "Secret meshlet-identity-issuer (crt.pem) or ConfigMap"
                " meshlet-identity-trust-anchors (ca-bundle.crt) is missing",
                "meshlet install-files manifests/base/secrets; kubectl apply -k ...",
            )
        ]
    issuer = issuers[0]
    results = [CheckResult(category, "the issuer and trust anchors are present", Status.OK)]
    try:
        is_ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    results.append(
        CheckResult(
            category,
            "the issuer is a certificate authority",
            Status.OK if is_ca else Status.FAIL,
            hint="" if is_ca else "the issuer certificate must have basicConstraints CA:TRUE",
        )
    )
    chained = any(_signed_by(issuer, anchor) for anchor in anchors)
    results.append(
        CheckResult(
            category,
            "the issuer is signed by a trust anchor",
            Status.OK if chained else Status.FAIL,
            hint="" if chained else "re-issue the issuer from the current trust anchor",
        )
    )
    results.append(_expiry(category, "issuer certificate", issuer, now))
    results.extend(_expiry(category, "trust anchor", anchor, now) for anchor in anchors)
    return results


def check_proxies(pods: Iterable[Object], version: str = __version__) -> list[CheckResult]:
    category = "data-plane"
    meshed = [
        pod
        for pod in pods
        if "meshlet.io/control-plane-ns" in ((pod.get("metadata") or {}).get("labels") or {})
    ]
    if not meshed:
        return [CheckResult(category, "data plane proxies are ready", Status.OK, "no meshed pods")]
    not_ready = [
        f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"
        for pod in meshed
        if not _ready(pod, PROXY_CONTAINER_NAME)
    ]
    stale = [
        f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"
        for pod in meshed
        if ((pod["metadata"].get("annotations") or {}).get("meshlet.io/proxy-version")) != version
    ]
    return [
        CheckResult(
            category,
            "data plane proxies are ready",
            Status.FAIL if not_ready else Status.OK,
            ", ".join(not_ready[:5]) or f"{len(meshed)} meshed pods",
            "kubectl logs <pod> -c meshlet-proxy" if not_ready else "",
        ),
        CheckResult(
            category,
            "data plane proxies are on the current version",
            Status.WARN if stale else Status.OK,
            ", ".join(stale[:5]) or version,
            "restart those workloads (kubectl rollout restart) to pick up the new proxy"
            if stale
            else "",
        ),
    ]
