"""The inbound policy's decision, row by row (the truth table of ``proxy/policy.py``)."""

from __future__ import annotations

import ipaddress

import pytest

from meshlet.names import INBOUND_POLICIES
from proxy.__main__ import check_policy
from proxy.policy import (
    AuthzReason,
    DefaultInboundPolicy,
    PolicyMetrics,
    decide,
    parse_cluster_networks,
    parse_policy,
)
from proxy.settings import SettingsError, load_settings
from proxy.tlsglue import MeshTls
from webhook.config import ProxyConfig, resolve_config
from webhook.patch import MeshParams, inject_pod
from webhook.settings import SettingsError as WebhookSettingsError
from webhook.settings import load_settings as load_webhook_settings

MESHED = "web.shop.serviceaccount.identity.meshlet.cluster.local"
IN = "10.42.0.17"
OUT = "203.0.113.9"

ALL_UNAUTH = DefaultInboundPolicy.ALL_UNAUTHENTICATED
ALL_AUTH = DefaultInboundPolicy.ALL_AUTHENTICATED
CLUSTER_UNAUTH = DefaultInboundPolicy.CLUSTER_UNAUTHENTICATED
CLUSTER_AUTH = DefaultInboundPolicy.CLUSTER_AUTHENTICATED
DENY = DefaultInboundPolicy.DENY

ALLOWED = AuthzReason.UNAUTHENTICATED_ALLOWED
AUTHENTICATED = AuthzReason.AUTHENTICATED
UNAUTHENTICATED = AuthzReason.UNAUTHENTICATED
OUTSIDE = AuthzReason.OUTSIDE_CLUSTER_NETWORKS
DENIED = AuthzReason.DENIED

ROWS = [
    # policy, client_id, client_ip, allowed, reason
    (ALL_UNAUTH, MESHED, IN, True, AUTHENTICATED),
    (ALL_UNAUTH, MESHED, OUT, True, AUTHENTICATED),
    (ALL_UNAUTH, None, IN, True, ALLOWED),
    (ALL_UNAUTH, None, OUT, True, ALLOWED),
    (ALL_AUTH, MESHED, IN, True, AUTHENTICATED),
    (ALL_AUTH, MESHED, OUT, True, AUTHENTICATED),
    (ALL_AUTH, None, IN, False, UNAUTHENTICATED),
    (ALL_AUTH, None, OUT, False, UNAUTHENTICATED),
    (CLUSTER_UNAUTH, MESHED, IN, True, AUTHENTICATED),
    (CLUSTER_UNAUTH, MESHED, OUT, False, OUTSIDE),
    (CLUSTER_UNAUTH, None, IN, True, ALLOWED),
    (CLUSTER_UNAUTH, None, OUT, False, OUTSIDE),
    (CLUSTER_AUTH, MESHED, IN, True, AUTHENTICATED),
    (CLUSTER_AUTH, MESHED, OUT, False, OUTSIDE),
    (CLUSTER_AUTH, None, IN, False, UNAUTHENTICATED),
    (CLUSTER_AUTH, None, OUT, False, OUTSIDE),
    (DENY, MESHED, IN, False, DENIED),
    (DENY, MESHED, OUT, False, DENIED),
    (DENY, None, IN, False, DENIED),
    (DENY, None, OUT, False, DENIED),
]


def _row_id(row: tuple[DefaultInboundPolicy, str | None, str, bool, AuthzReason]) -> str:
    client = "mtls" if row[1] else "plain"
    network = "in" if row[2] == IN else "out"
    return f"{row[0].value}/{client}/{network}"


@pytest.mark.parametrize(
    ("policy", "client_id", "client_ip", "allowed", "reason"),
    [pytest.param(*row, id=_row_id(row)) for row in ROWS],
)
def test_decision_table(
    policy: DefaultInboundPolicy,
    client_id: str | None,
    client_ip: str,
    allowed: bool,
    reason: AuthzReason,
) -> None:
    verdict = decide(policy, client_id=client_id, client_ip=client_ip)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)
    assert verdict.text


@pytest.mark.parametrize(
    ("client_ip", "inside"),
    [
        ("10.0.0.1", True),
        ("100.64.3.4", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("127.0.0.1", False),
        ("::ffff:10.1.2.3", True),
        ("fd00::1", True),
        ("2001:db8::1", False),
        ("fe80::1%eth0", False),
        ("", False),
        ("not an address", False),
    ],
)
def test_cluster_networks_by_default(client_ip: str, inside: bool) -> None:
    verdict = decide(CLUSTER_UNAUTH, client_id=None, client_ip=client_ip)
    assert verdict.allowed is inside


def test_custom_cluster_networks() -> None:
    networks = parse_cluster_networks("127.0.0.0/8, 2001:db8::/32")
    assert networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert decide(
        CLUSTER_UNAUTH, client_id=None, client_ip="127.0.0.1", cluster_networks=networks
    ).allowed
    assert not decide(
        CLUSTER_UNAUTH, client_id=None, client_ip="10.0.0.1", cluster_networks=networks
    ).allowed


def test_every_documented_policy_parses() -> None:
    assert [parse_policy(name).value for name in INBOUND_POLICIES] == list(INBOUND_POLICIES)
    assert parse_policy(" All-Authenticated ") is ALL_AUTH


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEFAULT_INBOUND_POLICY", "audit", "'audit' is not one of all-unauthenticated"),
        ("DEFAULT_INBOUND_POLICY", "", "'' is not one of"),
        ("CLUSTER_NETWORKS", "10.0.0.0/33", "'10.0.0.0/33' is not a network"),
        ("CLUSTER_NETWORKS", " , ", "no network given"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({f"MESHLET_PROXY_{variable}": value})
    assert str(caught.value).startswith(f"MESHLET_PROXY_{variable}: ")
    assert message in str(caught.value)


def test_settings_defaults_and_values() -> None:
    assert load_settings({}).default_inbound_policy is ALL_UNAUTH
    settings = load_settings(
        {
            "MESHLET_PROXY_DEFAULT_INBOUND_POLICY": "cluster-authenticated",
            "MESHLET_PROXY_CLUSTER_NETWORKS": "10.244.0.0/16",
        }
    )
    assert settings.default_inbound_policy is CLUSTER_AUTH
    assert settings.cluster_networks == (ipaddress.ip_network("10.244.0.0/16"),)


def test_metrics_render_linkerd_families() -> None:
    counters = PolicyMetrics(ALL_AUTH)
    lines: list[str] = []
    counters.render(lines)
    assert "# TYPE inbound_http_authz_deny_total counter" in lines
    assert "# TYPE inbound_tcp_authz_deny_total counter" in lines
    tls = 'tls="no_identity",no_tls_reason="no_tls_from_remote"'
    counters.deny_http(8080, UNAUTHENTICATED, tls)
    counters.deny_http(8080, UNAUTHENTICATED, tls)
    counters.deny_tcp(3306, UNAUTHENTICATED, tls)
    lines = []
    counters.render(lines)
    assert (
        'inbound_http_authz_deny_total{direction="inbound",srv_port="8080",'
        f'policy="all-authenticated",reason="unauthenticated",{tls}}} 2'
    ) in lines
    assert (
        'inbound_tcp_authz_deny_total{direction="inbound",srv_port="3306",'
        f'policy="all-authenticated",reason="unauthenticated",{tls}}} 1'
    ) in lines


def test_authenticated_policies_need_identity() -> None:
    for name in ("all-authenticated", "cluster-authenticated"):
        settings = load_settings({"MESHLET_PROXY_DEFAULT_INBOUND_POLICY": name})
        with pytest.raises(SettingsError, match=f"DEFAULT_INBOUND_POLICY={name} requires identity"):
            check_policy(settings, MeshTls())
    check_policy(load_settings({"MESHLET_PROXY_DEFAULT_INBOUND_POLICY": "deny"}), MeshTls())


def test_injector_writes_the_policy_from_annotation_or_install_default() -> None:
    """Pod annotation > namespace annotation > ``MESHLET_WEBHOOK_PROXY_DEFAULT_INBOUND_POLICY``."""
    installed = load_webhook_settings({"MESHLET_WEBHOOK_PROXY_DEFAULT_INBOUND_POLICY": "deny"})
    key = "config.meshlet.io/default-inbound-policy"
    rows = [
        ({}, {}, "deny"),
        ({key: "all-authenticated"}, {}, "all-authenticated"),
        ({key: "all-authenticated"}, {key: "cluster-unauthenticated"}, "cluster-unauthenticated"),
    ]
    for namespace, pod, expected in rows:
        config, warnings, _ = resolve_config(installed.proxy, namespace, pod)
        assert (config.default_inbound_policy, warnings) == (expected, [])
        env = _injected_env(config)
        assert env["MESHLET_PROXY_DEFAULT_INBOUND_POLICY"] == expected
    with pytest.raises(WebhookSettingsError, match="PROXY_DEFAULT_INBOUND_POLICY"):
        load_webhook_settings({"MESHLET_WEBHOOK_PROXY_DEFAULT_INBOUND_POLICY": "open"})


def _injected_env(config: ProxyConfig) -> dict[str, str]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    mesh = MeshParams("meshlet", "cluster.local", "cluster.local", None, None, "test")
    injected = inject_pod(pod, namespace="shop", config=config, mesh=mesh, owner=None)
    proxy = next(c for c in injected["spec"]["initContainers"] if c["name"] == "meshlet-proxy")
    return {item["name"]: item.get("value", "") for item in proxy["env"]}
