"""ProxySettings from MESHLET_PROXY_* variables, and the process's answer to bad ones."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest

from meshlet import names
from proxy.__main__ import set_up_logging
from proxy.settings import Address, SettingsError, load_settings, parse_ports, unknown_variables
from tests.proxy.conftest import PROXY_BIN


def test_defaults_match_the_contract() -> None:
    settings = load_settings({})
    assert settings.inbound_listen == Address("0.0.0.0", names.PROXY_INBOUND_PORT)
    assert settings.outbound_listen == Address("127.0.0.1", names.PROXY_OUTBOUND_PORT)
    assert settings.admin_listen == Address("0.0.0.0", names.PROXY_ADMIN_PORT)
    assert settings.opaque_ports == frozenset(names.DEFAULT_OPAQUE_PORTS)
    assert settings.detect_timeout == 10.0
    assert (settings.inbound_connect_timeout, settings.outbound_connect_timeout) == (0.1, 1.0)
    assert settings.shutdown_grace_period == 30.0
    assert settings.shutdown_endpoint_enabled is False


def test_every_variable_is_read() -> None:
    settings = load_settings(
        {
            "MESHLET_PROXY_INBOUND_LISTEN_ADDR": "[::]:5143",
            "MESHLET_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:5140",
            "MESHLET_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:5191",
            "MESHLET_PROXY_INBOUND_PORTS": "80, 8080-8082",
            "MESHLET_PROXY_OPAQUE_PORTS": "",
            "MESHLET_PROXY_DETECT_TIMEOUT": "500ms",
            "MESHLET_PROXY_INBOUND_CONNECT_TIMEOUT": "50ms",
            "MESHLET_PROXY_OUTBOUND_CONNECT_TIMEOUT": "2s",
            "MESHLET_PROXY_SHUTDOWN_GRACE_PERIOD": "0s",
            "MESHLET_PROXY_SHUTDOWN_ENDPOINT_ENABLED": "true",
            "MESHLET_PROXY_LOG_LEVEL": "DEBUG",
            "MESHLET_PROXY_LOG_FORMAT": "json",
            "MESHLET_PROXY_POD_NAME": "web-1",
            "MESHLET_PROXY_IDENTITY_DIR": "/var/run/x",
            "OTHER": "ignored",
        }
    )
    assert settings.inbound_listen == Address("::", 5143)
    assert str(settings.inbound_listen) == "[::]:5143"
    assert settings.inbound_ports == {80, 8080, 8081, 8082}
    assert settings.opaque_ports == frozenset()
    assert settings.detect_timeout == 0.5
    assert settings.shutdown_grace_period == 0.0
    assert settings.shutdown_endpoint_enabled is True
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    assert settings.pod_name == "web-1"
    assert settings.extra == {"IDENTITY_DIR": "/var/run/x"}
    assert unknown_variables(settings) == []


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param("INBOUND_LISTEN_ADDR", "localhost:4143", "not an IP address", id="hostname"),
        pytest.param("ADMIN_LISTEN_ADDR", "4191", "not host:port", id="no-host"),
        pytest.param("OPAQUE_PORTS", "25,70000", "out of range", id="port-range"),
        pytest.param("OPAQUE_PORTS", "90-80", "runs backwards", id="backwards"),
        pytest.param("OPAQUE_PORTS", "http", "not a port number", id="word"),
        pytest.param("DETECT_TIMEOUT", "10", "invalid duration", id="no-unit"),
        pytest.param("DETECT_TIMEOUT", "0s", "longer than zero", id="zero"),
        pytest.param("SHUTDOWN_ENDPOINT_ENABLED", "maybe", "not true or false", id="bool"),
        pytest.param("LOG_LEVEL", "loud", "not one of", id="level"),
        pytest.param("LOG_FORMAT", "xml", "not one of", id="format"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({f"MESHLET_PROXY_{variable}": value})
    assert str(caught.value).startswith(f"MESHLET_PROXY_{variable}: ")
    assert message in str(caught.value)


def test_port_lists() -> None:
    assert parse_ports("1-3,5, 5") == {1, 2, 3, 5}
    assert parse_ports(" ") == frozenset()


def test_unknown_variables_are_reported_not_fatal() -> None:
    settings = load_settings({"MESHLET_PROXY_DETECT_TIMOUT": "1s"})
    assert unknown_variables(settings) == ["MESHLET_PROXY_DETECT_TIMOUT"]


def test_process_exits_2_with_one_line_on_a_bad_value() -> None:
    env = {**os.environ, "MESHLET_PROXY_DETECT_TIMEOUT": "soon"}
    result = subprocess.run(
        [PROXY_BIN], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("meshlet-proxy: MESHLET_PROXY_DETECT_TIMEOUT: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("level", "hpack_debug"), [("debug", False), ("trace", True)])
def test_hpack_stays_quiet_below_trace(level: str, hpack_debug: bool) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        set_up_logging(load_settings({"MESHLET_PROXY_LOG_LEVEL": level}))
        assert logging.getLogger("proxy").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("hpack.hpack").isEnabledFor(logging.DEBUG) is hpack_debug
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("hpack").setLevel(logging.NOTSET)
        logging.getLogger("h2").setLevel(logging.NOTSET)
