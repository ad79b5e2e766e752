"""``meshlet demo --injector-only`` as a user runs it: a real webhook process, real curl,
clean-up after."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEMO = [sys.executable, "-m", "meshlet.cli", "demo", "--injector-only"]


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_shows_an_injection_and_cleans_up() -> None:
    result = subprocess.run(DEMO, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "pod shop/web-7c9d8f6b5- (owner Deployment/web): INJECT" in out
    assert "because injection_enabled_at_namespace" in out
    assert "- meshlet-init" in out
    assert "- meshlet-proxy" in out
    assert "native sidecar" in out
    assert "application containers: web, log-shipper, stats" in out
    assert re.search(r"patchType JSONPatch: \d+ bytes of base64, 11 operations", out)
    assert "add     /spec/initContainers" in out
    assert "because injection_not_enabled" in out
    assert "no patch: the pod is admitted unchanged" in out
    workdir = re.search(r"--self-signed (\S+)/tls", out)
    port = re.search(r"listening on https://127.0.0.1:(\d+)", out)
    assert workdir is not None
    assert port is not None
    assert not Path(workdir.group(1)).exists()
    assert _refused(int(port.group(1)))


def test_ctrl_c_stops_the_webhook_and_removes_the_directory() -> None:
    process = subprocess.Popen(
        DEMO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # printed before the webhook starts
        workdir = re.search(r"--self-signed (\S+)/tls", first)
        port = re.search(r"127.0.0.1:(\d+)", first)
        assert workdir is not None
        assert port is not None
        time.sleep(0.3)  # the demo now waits for the webhook it started to become ready
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "interrupted; cleaned up" in err
        assert not Path(workdir.group(1)).exists()
        assert _refused(int(port.group(1)))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
