"""The meshlet programs a local mesh runs, and how to start them inside pods.

Console scripts are taken from next to this interpreter (a virtual environment's ``bin/``),
else from PATH. ``install_proxy_init`` runs the init container's program in a pod;
``start_program`` starts a server that prints ``ready``; ``http_get`` and ``wait_proxy_ready``
talk to a proxy's admin port from inside its pod. ``let_users_reach_interpreter`` gives the
pods' users (UID 2102, nobody) the search permission they need to run this interpreter.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from meshlet.localmesh.netns import LocalMeshError, Netns, Process
from meshlet.names import PROXY_ADMIN_PORT

__all__ = [
    "DESTINATION_BIN",
    "IDENTITY_BIN",
    "PROXY",
    "PROXY_INIT",
    "PYTHON",
    "WEBHOOK_BIN",
    "unreachable_for",
    "http_get",
    "install_proxy_init",
    "let_users_reach_interpreter",
    "start_program",
    "wait_proxy_ready",
]

PYTHON: Final = sys.executable


def _console_script(name: str) -> str:
    beside = Path(PYTHON).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name) or name


PROXY: Final = _console_script("meshlet-proxy")
PROXY_INIT: Final = _console_script("meshlet-proxy-init")
IDENTITY_BIN: Final = _console_script("meshlet-identity")
DESTINATION_BIN: Final = _console_script("meshlet-destination")
WEBHOOK_BIN: Final = _console_script("meshlet-webhook")


def install_proxy_init(pod: Netns, *flags: str) -> str:
    """Run ``meshlet-proxy-init`` inside ``pod`` (as an init container would); its stderr."""
    done = pod.run_result([PROXY_INIT, *flags])
    if done.returncode != 0:
        raise LocalMeshError(f"meshlet-proxy-init {' '.join(flags)}: {done.stderr.strip()}")
    return done.stderr


def start_program(
    pod: Netns, argv: list[str], *, uid: int | None = None, timeout: float = 15.0
) -> Process:
    """Start a program that prints ``ready`` once it serves, and wait for that line."""
    process = pod.spawn(argv, uid=uid, label=f"{pod.name}: {' '.join(argv[1:3])}")
    line = process.read_line(timeout=timeout)
    if line != "ready":
        raise LocalMeshError(f"{process.label} said {line!r}")
    return process


def http_get(pod: Netns, address: tuple[str, int], path: str) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET from inside ``pod``: ``(status, body)``, connection closed."""
    with pod.connect(address, timeout=5) as sock:
        host = f"{address[0]}:{address[1]}"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def wait_proxy_ready(pod: Netns, proxy: Process, deadline: float) -> None:
    """Poll the proxy's admin ``/ready`` from inside ``pod`` until 200 (it holds a certificate
    when identity is on); raise with its stderr if it exits or the deadline passes."""
    delay = 0.01
    last = "no answer"
    while time.monotonic() < deadline:
        if proxy.popen.poll() is not None:
            raise LocalMeshError(
                f"{proxy.label} exited ({proxy.popen.returncode}): {proxy.stderr_text()}"
            )
        try:
            status, body = http_get(pod, ("127.0.0.1", PROXY_ADMIN_PORT), "/ready")
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body!r}"
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise LocalMeshError(f"{proxy.label} not ready: {last}: {proxy.stderr_text()}")


def let_users_reach_interpreter(stop_at: Path | None = None) -> list[Path]:
    """Add the search bit (o+x) to the directories from this interpreter's environment up to
    ``stop_at`` (exclusive; default: the directory holding a ``.tox`` the environment is in)
    that lack it: tox creates ``.tox`` with mode 0700, which would keep the proxy (UID 2102)
    and the pods' applications (nobody) from running the interpreter. Nothing is changed when
    the environment is not inside ``stop_at``; returns the directories changed."""
    prefix = Path(sys.prefix).resolve()
    if stop_at is None:
        tox = next((d for d in prefix.parents if d.name == ".tox"), None)
        if tox is None:
            return []
        stop_at = tox.parent
    top = stop_at.resolve()
    if top not in prefix.parents:
        return []
    changed = []
    for directory in [prefix, *prefix.parents]:
        if directory == top:
            break
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            changed.append(directory)
    return changed


def unreachable_for(uid: int) -> str | None:
    """Why user ``uid`` cannot run this interpreter and import meshlet and grpc (the pods' users
    must: the proxy as UID 2102, the applications as nobody); None when it can."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    argv += [PYTHON, "-c", "import meshlet.localmesh.frontend, proxy"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{PYTHON} as UID {uid}: {error}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return f"{PYTHON} as UID {uid}: {lines[-1] if lines else done.returncode}"
    return None
