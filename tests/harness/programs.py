"""The programs tests run inside pods: meshlet-proxy-init (``meshlet.localmesh.programs``) and
the reporter server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from meshlet.localmesh.programs import PROXY_INIT, PYTHON, install_proxy_init
from tests.harness.netns import HarnessError, Netns, Process

__all__ = [
    "PROXY_INIT",
    "PYTHON",
    "REPORTER",
    "ask",
    "ask_here",
    "install_proxy_init",
    "start_reporter",
]

REPORTER: Final = str(Path(__file__).with_name("reporter.py"))


def start_reporter(pod: Netns, *addresses: str) -> Process:
    """Start the reporter server in ``pod`` on ``addresses`` and wait until it listens."""
    process = pod.spawn([PYTHON, REPORTER, "serve", *addresses], label=f"{pod.name}: reporter")
    line = process.read_line(timeout=10)
    if line != "ready":
        raise HarnessError(f"reporter said {line!r} instead of ready")
    return process


def ask(
    pod: Netns, host: str, port: int, *, uid: int | None = None, gid: int | None = None
) -> dict[str, object] | str:
    """Connect from ``pod`` (as ``uid``/``gid``, in a subprocess); the reporter's answer."""
    line = pod.run([PYTHON, REPORTER, "connect", host, str(port)], uid=uid, gid=gid).strip()
    if line.startswith("error:"):
        return line
    answer = json.loads(line)
    assert isinstance(answer, dict)
    return answer


def ask_here(pod: Netns, host: str, port: int) -> dict[str, object] | str:
    """Like ``ask`` but from the test process itself (root), through a socket in ``pod``."""
    try:
        with pod.connect((host, port), timeout=5) as sock:
            line = sock.makefile("r").readline().strip()
    except OSError as exc:
        return f"error:{exc}"
    answer = json.loads(line)
    assert isinstance(answer, dict)
    return answer
