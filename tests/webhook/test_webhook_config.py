"""Override parsing (config.meshlet.io/*), pod shape checks and WebhookSettings loading."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from webhook.config import (
    ConfigValueError,
    ProxyConfig,
    parse_ports,
    parse_quantity,
    resolve_config,
)
from webhook.settings import SettingsError, load_settings
from webhook.shape import pod_shape_error

P = "config.meshlet.io/"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80", "80"),
        (" 80 , 443 ", "80,443"),
        ("8000-8010", "8000-8010"),
        ("5-5", "5"),
        ("", ""),
        ("1,65535", "1,65535"),
    ],
)
def test_parse_ports(text: str, expected: str) -> None:
    assert parse_ports(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "http", "10-5", "1-2-3", "-1", "80;81"])
def test_parse_ports_rejects(text: str) -> None:
    with pytest.raises(ConfigValueError):
        parse_ports(text)


@pytest.mark.parametrize("text", ["100m", "1", "0.5", "64Mi", "1Gi", "2k"])
def test_quantities(text: str) -> None:
    assert parse_quantity(text) == text


@pytest.mark.parametrize("text", ["-1", "1 Gi", "lots", "1gi", ""])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ConfigValueError):
        parse_quantity(text)


def test_pod_wins_over_namespace_and_namespace_values_are_inherited() -> None:
    config, warnings, inherited = resolve_config(
        ProxyConfig(),
        {P + "proxy-log-level": "debug", P + "proxy-uid": "3000"},
        {P + "proxy-log-level": "warn"},
    )
    assert (config.log_level, config.proxy_uid, warnings) == ("warn", 3000, [])
    assert inherited == {P + "proxy-uid": "3000"}


def test_invalid_value_keeps_default_and_names_the_value() -> None:
    config, warnings, _ = resolve_config(ProxyConfig(), {}, {P + "opaque-ports": "mysql"})
    assert config.opaque_ports == ProxyConfig().opaque_ports
    assert len(warnings) == 1
    assert "'mysql'" in warnings[0]
    assert P + "opaque-ports" in warnings[0]


def test_request_above_limit_falls_back_to_defaults() -> None:
    config, warnings, _ = resolve_config(ProxyConfig(), {}, {P + "proxy-cpu-limit": "50m"})
    assert (config.cpu_request, config.cpu_limit) == ("100m", None)
    assert "exceeds" in warnings[0]


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        ([], "must be a JSON object"),
        ({"spec": {}}, "spec.containers must be a non-empty list"),
        ({"spec": {"containers": "x"}}, "spec.containers must be a non-empty list"),
        ({"spec": {"containers": [1]}}, "spec.containers[0] must be an object"),
        ({"spec": {"containers": [{"name": 1}]}}, "spec.containers[0].name must be a string"),
        ({"metadata": [], "spec": {}}, "metadata must be an object"),
        ({"metadata": {"annotations": {"a": 1}}}, "metadata.annotations['a'] must be a string"),
        (
            {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": "80"}]}]}},
            "spec.containers[0].ports[0].containerPort must be an integer",
        ),
        ({"spec": {"containers": [{"name": "a"}], "hostNetwork": "yes"}}, "hostNetwork"),
        ({"spec": {"containers": [{"name": "a"}], "volumes": [{"name": None}]}}, "volumes[0].name"),
    ],
)
def test_pod_shape_errors(pod: Any, message: str) -> None:
    error = pod_shape_error(pod)
    assert error is not None
    assert message in error


def test_pod_shape_accepts_nulls() -> None:
    pod = {"metadata": {"labels": None}, "spec": {"containers": [{"name": "a", "ports": None}]}}
    assert pod_shape_error(pod) is None


def test_settings_from_environment(tmp_path: Path) -> None:
    anchors = tmp_path / "ca.crt"
    anchors.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    settings = load_settings(
        {
            "MESHLET_WEBHOOK_LISTEN_ADDR": "127.0.0.1:9443",
            "MESHLET_WEBHOOK_TRUST_ANCHORS_FILE": str(anchors),
            "MESHLET_WEBHOOK_PROXY_CPU_LIMIT": "1",
            "MESHLET_WEBHOOK_CONTROL_PLANE_NS": "mesh",
        }
    )
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 9443)
    assert settings.trust_root_sha256 == hashlib.sha256(anchors.read_bytes()).hexdigest()
    assert (settings.proxy.cpu_limit, settings.proxy.cpu_request) == ("1", "100m")
    assert settings.control_plane_ns == "mesh"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MESHLET_WEBHOOK_LISTEN_ADDR": "8443"},
            "MESHLET_WEBHOOK_LISTEN_ADDR: '8443' is not host:port",
        ),
        ({"MESHLET_WEBHOOK_PROXY_UID": "0"}, "MESHLET_WEBHOOK_PROXY_UID"),
        ({"MESHLET_WEBHOOK_TRUST_ANCHORS_FILE": "/nonexistent/ca.crt"}, "cannot read /nonexistent"),
        ({"MESHLET_WEBHOOK_CONTROL_PLANE_NS": "Mesh_1"}, "not a DNS label"),
        ({"MESHLET_WEBHOOK_MAX_BODY_BYTES": "ten"}, "MAX_BODY_BYTES"),
    ],
)
def test_settings_errors_are_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_webhook_flags_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from webhook.__main__ import _parser, _settings  # noqa: PLC0415

    monkeypatch.setenv("MESHLET_WEBHOOK_LISTEN_ADDR", "not an address")
    monkeypatch.setenv("MESHLET_WEBHOOK_PROXY_VERSION", "v9")
    args = _parser().parse_args(
        ["--listen", "127.0.0.1:9999", "--self-signed", str(tmp_path / "tls")]
    )
    settings, cert, key = _settings(args)
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 9999)
    assert settings.proxy.version == "v9"
    assert cert.exists()
    assert key.stat().st_mode & 0o077 == 0
