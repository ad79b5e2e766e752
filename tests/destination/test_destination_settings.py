"""DestinationSettings: flags over environment over defaults, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from destination.settings import SettingsError, load_settings

TLS = ["--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"]


def test_defaults() -> None:
    settings, self_signed = load_settings(TLS, {})
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 8086)
    assert settings.source == "kubernetes"
    assert settings.local_file is None
    assert (settings.cluster_domain, settings.control_plane_ns, settings.trust_domain) == (
        "cluster.local",
        "meshlet",
        "cluster.local",
    )
    assert settings.keepalive_interval == 10.0
    assert self_signed is None


def test_environment_and_flags() -> None:
    env = {
        "MESHLET_DESTINATION_TLS_CERT_FILE": "/env/c.pem",
        "MESHLET_DESTINATION_TLS_KEY_FILE": "/env/k.pem",
        "MESHLET_DESTINATION_SOURCE": "/env/local.yaml",
        "MESHLET_DESTINATION_LISTEN_ADDR": "127.0.0.1:9000",
        "MESHLET_DESTINATION_KEEPALIVE_INTERVAL": "500ms",
        "MESHLET_DESTINATION_WATCH_TIMEOUT": "1m",
    }
    settings, _ = load_settings(["--listen-addr", "[::1]:9001"], env)
    assert settings.tls_cert == Path("/env/c.pem")
    assert settings.local_file == Path("/env/local.yaml")
    assert (settings.listen_host, settings.listen_port) == ("::1", 9001)  # the flag wins
    assert settings.keepalive_interval == 0.5
    assert (settings.watch_timeout, settings.watch_idle_timeout) == (60.0, 90.0)


def test_self_signed_supplies_the_files() -> None:
    settings, self_signed = load_settings(["--self-signed", "/tmp/x"], {})
    assert self_signed == Path("/tmp/x")
    assert settings.tls_cert == Path("/tmp/x/tls.crt")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param([], "--tls-cert", id="no-tls"),
        pytest.param([*TLS, "--listen-addr", "nowhere"], "listen-addr", id="bad-listen"),
        pytest.param([*TLS, "--keepalive-interval", "0s"], "more than zero", id="zero-keepalive"),
        pytest.param([*TLS, "--max-streams", "-5"], "max-streams", id="bad-max"),
        pytest.param([*TLS, "--log-format", "xml"], "log-format", id="bad-format"),
    ],
)
def test_errors_name_the_setting(argv: list[str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(argv, {})


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--tls-cert", "/old/c.pem", "--tls-key", "/old/k.pem"], {}),
        (
            [],
            {
                "MESHLET_DESTINATION_TLS_CERT": "/old/c.pem",
                "MESHLET_DESTINATION_TLS_KEY": "/old/k.pem",
            },
        ),
    ],
    ids=["flags", "variables"],
)
def test_the_earlier_certificate_names_still_work(argv: list[str], env: dict[str, str]) -> None:
    settings, _ = load_settings(argv, env)
    assert (settings.tls_cert, settings.tls_key) == (Path("/old/c.pem"), Path("/old/k.pem"))


def test_the_file_names_win_over_the_earlier_ones() -> None:
    env = {
        "MESHLET_DESTINATION_TLS_CERT": "/old/c.pem",
        "MESHLET_DESTINATION_TLS_CERT_FILE": "/new/c.pem",
        "MESHLET_DESTINATION_TLS_KEY_FILE": "/new/k.pem",
    }
    settings, _ = load_settings([], env)
    assert (settings.tls_cert, settings.tls_key) == (Path("/new/c.pem"), Path("/new/k.pem"))
