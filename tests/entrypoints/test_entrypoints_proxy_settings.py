"""Every ``MESHLET_PROXY_*`` variable with a wrong type or an out-of-range value stops the proxy
at start-up with a ``SettingsError`` naming the variable (``meshlet-proxy`` prints it and exits
2; test_entrypoints_servers.py runs the real process for a sample of these rows).

The rows run the same loading sequence as ``proxy.__main__.main``, in-process, so all of them
take milliseconds. ``test_every_variable_has_a_row`` keeps the table in step with
docs/architecture.md: a new variable needs a bad value here, or a reason it accepts any text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from proxy import settings as settings_module
from proxy.__main__ import load_discovery
from proxy.settings import PREFIX, SettingsError, load_settings
from proxy.tapserver import load_tap_settings
from proxy.tlsglue import load_mesh_tls

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
LOCAL_NAME = "web.shop.serviceaccount.identity.meshlet.cluster.local"

_DURATIONS = ("10x", "-1s", "abc", "1h30")
_POSITIVE = (*_DURATIONS, "0", "0s")
_ADDRESSES = ("localhost:4143", "127.0.0.1:70000", "127.0.0.1", "127.0.0.1:-1", "127.0.0.1:abc")
_PORT_LISTS = ("0", "70000", "10-5", "abc", "80,-1", "1-2-3")
_COUNTS = ("-1", "abc", "1e3", "1.5")

# variable suffix -> bad values
BAD: dict[str, tuple[str, ...]] = {
    "INBOUND_LISTEN_ADDR": _ADDRESSES,
    "OUTBOUND_LISTEN_ADDR": _ADDRESSES,
    "ADMIN_LISTEN_ADDR": _ADDRESSES,
    "TAP_LISTEN_ADDR": _ADDRESSES,
    "LOG_LEVEL": ("loud", "10"),
    "LOG_FORMAT": ("xml",),
    "INBOUND_PORTS": _PORT_LISTS,
    "OPAQUE_PORTS": _PORT_LISTS,
    "DETECT_TIMEOUT": _POSITIVE,
    "INBOUND_CONNECT_TIMEOUT": _POSITIVE,
    "OUTBOUND_CONNECT_TIMEOUT": _POSITIVE,
    "SHUTDOWN_GRACE_PERIOD": _DURATIONS,
    "SHUTDOWN_ENDPOINT_ENABLED": ("maybe", "2"),
    "ADMIN_REQUEST_TIMEOUT": _POSITIVE,
    "HTTP1_POOL_IDLE_TIMEOUT": _DURATIONS,
    "HTTP1_REPLAY_BUFFER_BYTES": _COUNTS,
    "HTTP2_KEEPALIVE_INTERVAL": _POSITIVE,
    "HTTP2_KEEPALIVE_TIMEOUT": _POSITIVE,
    "OUTBOUND_FAILFAST_TIMEOUT": _POSITIVE,
    "OUTBOUND_DISCOVERY_IDLE_TIMEOUT": _POSITIVE,
    "OUTBOUND_MAX_IDLE_PER_ENDPOINT": _COUNTS,
    "OUTBOUND_RETRY_BUFFER_BYTES": _COUNTS,
    "IDENTITY_TRUST_ANCHORS": ("not PEM", "-----BEGIN CERTIFICATE-----\nAAAA\n"),
    "IDENTITY_LOCAL_NAME": ("",),
    "IDENTITY_WAIT_TIMEOUT": _DURATIONS,
    "IDENTITY_SVC_ADDR": ("abc", "identity:70000", ":8080"),
    "DESTINATION_SVC_ADDR": ("abc", "destination:70000", "destination:0"),
    "OUTBOUND_HTTP2_PER_STREAM": ("maybe", "2"),
    "OUTBOUND_HTTP1_UPGRADE": ("maybe", "2"),
    "DEFAULT_INBOUND_POLICY": ("everyone", "all_authenticated"),
    "CLUSTER_NETWORKS": ("abc", "10.0.0.0/33", "10.0.0.1/8x"),
    "TAP_AUTHORIZED_IDENTITIES": ("not a name!", "web..shop"),
}
# Free text (names, metadata) or paths (the token file must exist: see its test below).
ANY_TEXT = frozenset({
    "IDENTITY_DIR", "IDENTITY_TOKEN_FILE", "IDENTITY_SVC_NAME", "DESTINATION_SVC_NAME",
    "POD_NAME", "POD_NAMESPACE", "POD_IP", "SERVICE_ACCOUNT", "WORKLOAD",
})  # fmt: skip
# What a variable needs beside it to be read at all (identity and discovery are off without).
_CONTEXT: dict[str, Mapping[str, str]] = {
    "IDENTITY_TRUST_ANCHORS": {"IDENTITY_LOCAL_NAME": LOCAL_NAME},
    "IDENTITY_LOCAL_NAME": {"IDENTITY_TRUST_ANCHORS": "{anchors}", "IDENTITY_SVC_ADDR": "a:1"},
    "IDENTITY_SVC_ADDR": {"IDENTITY_TRUST_ANCHORS": "{anchors}", "IDENTITY_LOCAL_NAME": LOCAL_NAME},
    "DESTINATION_SVC_ADDR": {"IDENTITY_TRUST_ANCHORS": "{anchors}"},
}


def start_up(environ: Mapping[str, str]) -> None:
    """What ``meshlet-proxy`` reads before it opens a listener, in the same order."""
    settings = load_settings(environ)
    load_tap_settings(settings)
    load_mesh_tls(settings)
    load_discovery(settings)


def _rows() -> list[object]:
    return [
        pytest.param(suffix, value, id=f"{suffix}={value!r}")
        for suffix, values in BAD.items()
        for value in values
    ]


@pytest.mark.parametrize(("suffix", "value"), _rows())
def test_bad_value_names_the_variable(suffix: str, value: str, paths: dict[str, str]) -> None:
    context = {
        PREFIX + key: text.replace("{anchors}", paths["anchors_pem"])
        for key, text in _CONTEXT.get(suffix, {}).items()
    }
    with pytest.raises(SettingsError) as raised:
        start_up({**context, PREFIX + suffix: value})
    message = str(raised.value)
    assert PREFIX + suffix in message
    assert "\n" not in message.strip()


def test_keepalive_timeout_must_be_shorter_than_interval() -> None:
    with pytest.raises(SettingsError, match="HTTP2_KEEPALIVE_TIMEOUT"):
        start_up({PREFIX + "HTTP2_KEEPALIVE_TIMEOUT": "10s"})


def test_missing_token_file_is_named_at_start_up(paths: dict[str, str]) -> None:
    environ = {
        PREFIX + "IDENTITY_TRUST_ANCHORS": paths["anchors_pem"],
        PREFIX + "IDENTITY_LOCAL_NAME": LOCAL_NAME,
        PREFIX + "IDENTITY_TOKEN_FILE": f"{paths['tmp']}/missing-token",
    }
    with pytest.raises(SettingsError, match="IDENTITY_TOKEN_FILE"):
        start_up(environ)


def test_good_values_start() -> None:
    start_up({PREFIX + "DETECT_TIMEOUT": "1s", PREFIX + "OPAQUE_PORTS": "25,3306-3307"})


def test_every_variable_has_a_row() -> None:
    """Every variable docs/architecture.md spells out, and every one ``load_settings`` parses."""
    documented = set(re.findall(r"MESHLET_PROXY_(\w+)", ARCHITECTURE.read_text()))
    parsed = set(settings_module._FIELDS)
    missing = sorted((documented | parsed) - BAD.keys() - ANY_TEXT)
    assert not missing, f"no bad-value row for {missing}"
    assert len(documented) >= 20
