"""``meshlet-proxy`` as its own process with identity from the environment (``main``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.proxy.conftest import free_ports

from .conftest import WEB, IdentityService, free_port

FIXED_PROXY = Path(__file__).parent.parent / "proxy" / "fixed_proxy.py"


def _proxy_env(variables: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHLET_PROXY_")}
    env.update({f"MESHLET_PROXY_{k}": v for k, v in variables.items()})
    for name, port in ports.items():
        env[f"MESHLET_PROXY_{name}_LISTEN_ADDR"] = f"127.0.0.1:{port}"
    return env


@pytest.fixture
def proxy_process(
    identity_service: IdentityService, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int], Path]]:
    ports = dict(zip(("ADMIN", "INBOUND", "OUTBOUND", "TAP"), free_ports(4), strict=True))
    log = tmp_path / "proxy.log"
    env = _proxy_env(identity_service.variables(WEB), ports)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(FIXED_PROXY), "9"], env=env, stdout=out, stderr=out
        )
    try:
        yield process, ports, log
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_process_with_identity_becomes_ready_and_serves_the_tap(
    proxy_process: tuple[subprocess.Popen[bytes], dict[str, int], Path],
) -> None:
    process, ports, log = proxy_process
    admin = f"http://127.0.0.1:{ports['ADMIN']}"
    deadline = time.monotonic() + 30
    ready = 0
    while time.monotonic() < deadline and ready != 200:
        assert process.poll() is None, log.read_text()
        try:
            ready = httpx.get(f"{admin}/ready", timeout=2).status_code
            assert httpx.get(f"{admin}/live", timeout=2).status_code == 200
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    assert ready == 200, log.read_text()
    with socket.create_connection(("127.0.0.1", ports["TAP"]), timeout=5):
        pass  # the tap server listens next to the admin server
    process.terminate()
    assert process.wait(timeout=15) == 0
    text = log.read_text()
    assert "waiting for the first certificate" in text
    assert "tok-web" not in text  # the token is never logged


def test_incomplete_identity_configuration_exits_2(
    identity_service: IdentityService,
) -> None:
    variables = identity_service.variables(WEB)
    del variables["IDENTITY_LOCAL_NAME"]
    ports = {name: free_port() for name in ("ADMIN", "INBOUND", "OUTBOUND")}
    result = subprocess.run(
        [sys.executable, str(FIXED_PROXY), "9"],
        env=_proxy_env(variables, ports),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "meshlet-proxy: MESHLET_PROXY_IDENTITY_LOCAL_NAME is required"
    )


def test_process_with_discovery_configured_still_reaches_unknown_destinations(
    identity_service: IdentityService, app_port: int, tmp_path: Path
) -> None:
    """With ``MESHLET_PROXY_DESTINATION_*`` set the process runs the discovery client; while the
    destination service does not answer, destinations go to their original address."""
    # Every listener on a free port (the tap's default 4190 may be taken on a shared machine).
    ports = dict(zip(("ADMIN", "INBOUND", "OUTBOUND", "TAP"), free_ports(4), strict=True))
    variables = identity_service.variables(WEB)
    variables["DESTINATION_SVC_ADDR"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(FIXED_PROXY), str(app_port)],
            env=_proxy_env(variables, ports),
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            assert process.poll() is None, log.read_text()
            try:
                status = httpx.get(
                    f"http://127.0.0.1:{ports['OUTBOUND']}/bytes/10", timeout=10
                ).status_code
            except httpx.TransportError:
                time.sleep(0.1)
        assert status == 200, log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_bad_destination_address_exits_2(identity_service: IdentityService) -> None:
    variables = identity_service.variables(WEB)
    variables["DESTINATION_SVC_ADDR"] = "no-port-here"
    ports = {name: free_port() for name in ("ADMIN", "INBOUND", "OUTBOUND")}
    result = subprocess.run(
        [sys.executable, str(FIXED_PROXY), "9"],
        env=_proxy_env(variables, ports),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.decode().startswith("meshlet-proxy: MESHLET_PROXY_DESTINATION_SVC_ADDR")
