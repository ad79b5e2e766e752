"""SIGTERM on a real proxy process: stop accepting, finish in-flight requests, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.proxy.conftest import HERE, free_port


def _start(backend_port: int, grace: str) -> tuple[subprocess.Popen[str], int, int]:
    inbound, admin = free_port(), free_port()
    env = {
        **os.environ,
        "MESHLET_PROXY_INBOUND_LISTEN_ADDR": f"127.0.0.1:{inbound}",
        "MESHLET_PROXY_OUTBOUND_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "MESHLET_PROXY_ADMIN_LISTEN_ADDR": f"127.0.0.1:{admin}",
        # not the default 4190: another proxy on this machine may hold it
        "MESHLET_PROXY_TAP_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "MESHLET_PROXY_SHUTDOWN_GRACE_PERIOD": grace,
    }
    process = subprocess.Popen(
        [sys.executable, str(HERE / "fixed_proxy.py"), str(backend_port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 15
    while _status(f"http://127.0.0.1:{admin}/ready") != "200":
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("proxy did not become ready")
        time.sleep(0.05)
    return process, inbound, admin


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
    time.sleep(0.5)
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
    proxy, inbound, _admin = _start(http1_backend, "1s")
    cleanup.append(proxy)
    request = subprocess.Popen(
        ["curl", "-s", "--max-time", "20", f"http://127.0.0.1:{inbound}/slow/8000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    cleanup.append(request)
    time.sleep(0.5)
    started = time.monotonic()
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(timeout=15) == 0
    assert 0.8 < time.monotonic() - started < 6
    assert request.wait(timeout=10) != 0  # cut off, and told so
    assert proxy.stderr is not None
    assert "grace period over" in proxy.stderr.read()
