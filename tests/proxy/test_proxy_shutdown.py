"""SIGTERM on a real proxy process: stop accepting, finish in-flight requests, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.proxy.conftest import HERE, free_ports

# The process imports the whole proxy before it listens: on a loaded 2-core machine that alone
# can take many seconds. The deadline bounds a hang; an early exit is reported at once.
READY_DEADLINE = 60.0


def _start(backend_port: int, grace: str) -> tuple[subprocess.Popen[str], int, int]:
    # Every listener on a free port, none on a default (4140/4143/4190/4191): another proxy on
    # this machine may hold those.
    inbound, outbound, admin, tap = free_ports(4)
    env = {
        **os.environ,
        "MESHLET_PROXY_INBOUND_LISTEN_ADDR": f"127.0.0.1:{inbound}",
        "MESHLET_PROXY_OUTBOUND_LISTEN_ADDR": f"127.0.0.1:{outbound}",
        "MESHLET_PROXY_ADMIN_LISTEN_ADDR": f"127.0.0.1:{admin}",
        "MESHLET_PROXY_TAP_LISTEN_ADDR": f"127.0.0.1:{tap}",
        "MESHLET_PROXY_SHUTDOWN_GRACE_PERIOD": grace,
    }
    process = subprocess.Popen(
        [sys.executable, str(HERE / "fixed_proxy.py"), str(backend_port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + READY_DEADLINE
    while _status(f"http://127.0.0.1:{admin}/ready") != "200":
        if process.poll() is not None:
            assert process.stderr is not None
            raise RuntimeError(f"proxy exited {process.returncode}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"proxy not ready after {READY_DEADLINE:g}s")
        time.sleep(0.05)
    return process, inbound, admin


def _in_flight(admin: int) -> bool:
    """The proxy's metrics show an inbound request without its response yet."""
    result = subprocess.run(
        ["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{admin}/metrics"],
        capture_output=True,
        text=True,
        check=False,
    )
    requests = _total(result.stdout, "request_total")
    responses = _total(result.stdout, "response_total")
    return requests > responses


def _total(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name + "{") and 'direction="inbound"' in line
    )


def _wait_in_flight(admin: int) -> None:
    deadline = time.monotonic() + 30
    while not _in_flight(admin):
        assert time.monotonic() < deadline, "the request never reached the proxy"
        time.sleep(0.05)


def _status(url: str) -> str:
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stderr is not None:
                process.stderr.close()
            if process.stdout is not None:
                process.stdout.close()


def test_sigterm_finishes_in_flight_requests_then_exits(
    http1_backend: int, cleanup: list[subprocess.Popen[str]]
) -> None:
    proxy, inbound, admin = _start(http1_backend, "20s")
    cleanup.append(proxy)
    request = subprocess.Popen(
        ["curl", "-s", "--max-time", "20", f"http://127.0.0.1:{inbound}/slow/1500"],
        stdout=subprocess.PIPE,
        text=True,
    )
    cleanup.append(request)
    _wait_in_flight(admin)
    started = time.monotonic()
    proxy.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert _status(f"http://127.0.0.1:{admin}/ready") == "503"  # draining: not ready
    assert _status(f"http://127.0.0.1:{inbound}/") == "000"  # no longer accepting
    out, _ = request.communicate(timeout=20)
    assert out == "slow response\n"
    assert proxy.wait(timeout=20) == 0
    assert time.monotonic() - started < 10  # exited once drained, not at the deadline
    assert proxy.stderr is not None
    assert "drained" in proxy.stderr.read()


def test_grace_period_bounds_the_drain(
    http1_backend: int, cleanup: list[subprocess.Popen[str]]
) -> None:
    proxy, inbound, admin = _start(http1_backend, "1s")
    cleanup.append(proxy)
    request = subprocess.Popen(
        ["curl", "-s", "--max-time", "20", f"http://127.0.0.1:{inbound}/slow/8000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    cleanup.append(request)
    _wait_in_flight(admin)
    started = time.monotonic()
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(timeout=15) == 0
    assert 0.8 < time.monotonic() - started < 6
    assert request.wait(timeout=10) != 0  # cut off, and told so
    assert proxy.stderr is not None
    assert "grace period over" in proxy.stderr.read()
