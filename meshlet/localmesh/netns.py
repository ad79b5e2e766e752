"""Network namespaces: create, run commands and processes inside, open sockets inside.

Every namespace is named ``mlt-<pid>-<n>-<role>`` so parallel runs (tests, the demo) never
collide and a leftover is traceable to the process that made it. Nothing here ever configures
the machine's own network namespace: commands go through ``ip -n <ns>`` or
``ip netns exec <ns>``, and interfaces are created directly inside the namespaces.

``Netns.socket()`` opens a socket *inside* the namespace from the calling process itself (setns
on the calling thread for the duration of the ``socket()`` call), so callers can connect and poll
without starting a Python subprocess for each client. ``Netns.enter_thread()`` moves the calling
thread (and the threads it starts later) into the namespace for good: for a worker thread that
uses ordinary clients (urllib) against addresses inside.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Final

__all__ = [
    "LocalMeshError",
    "clean_env",
    "Netns",
    "Process",
    "new_name",
    "run",
]

_CLONE_NEWNET: Final = 0x40000000
_PROXY_VARS: Final = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy"})
_Socket = socket.socket
_counter = itertools.count(1)
_setns_lock = threading.Lock()
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class LocalMeshError(Exception):
    """A harness step failed; the message carries the command and its stderr."""


def new_name(role: str) -> str:
    """A namespace name unique to this process and call: ``mlt-<pid>-<n>-<role>``."""
    return f"mlt-{os.getpid()}-{next(_counter)}-{role}"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without HTTP proxy settings (curl and grpc honour them, and
    a pod's traffic must go where its caller sends it), plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key.lower() not in _PROXY_VARS}
    return {**env, **(extra or {})}


def run(argv: Sequence[str], *, input_text: str | None = None, timeout: float = 10.0) -> str:
    """Run a command to completion; raise ``LocalMeshError`` with its stderr if it fails."""
    done = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=clean_env(),
    )
    if done.returncode != 0:
        raise LocalMeshError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class Process:
    """A process started in a namespace; ``stop()`` ends it by PID and reaps it.

    Its stderr goes to a file (``log_path`` or an anonymous temporary file), never to a pipe, so
    a chatty or failing program can never block on a full pipe.
    """

    def __init__(self, popen: subprocess.Popen[str], label: str, stderr_file: IO[bytes]) -> None:
        self.popen = popen
        self.label = label
        self._stderr_file = stderr_file

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_line(self, timeout: float = 5.0) -> str:
        """The next stdout line (the process must have been started with ``capture=True``)."""
        stdout = self.popen.stdout
        assert stdout is not None, f"{self.label}: stdout was not captured"
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line:
            raise LocalMeshError(f"{self.label}: no output line within {timeout}s")
        if not line[0]:
            raise LocalMeshError(f"{self.label}: exited ({self.popen.poll()}) {self.stderr_text()}")
        return line[0].rstrip("\n")

    def stderr_text(self, limit: int = 4000) -> str:
        """The last ``limit`` characters the process wrote to stderr so far."""
        if self._stderr_file.closed:
            return ""
        # pread leaves the file offset alone: the child shares it (an inherited descriptor).
        fd = self._stderr_file.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - limit)
        return os.pread(fd, size - start, start).decode(errors="replace")

    def stop(self, grace: float = 3.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(grace)
        for stream in (self.popen.stdout, self.popen.stdin):
            if stream is not None:
                stream.close()
        self._stderr_file.close()
        return self.popen.returncode


class Netns:
    """One named network namespace (``ip netns``), deleted by ``delete()``."""

    def __init__(self, role: str) -> None:
        self.name = new_name(role)
        run(["ip", "netns", "add", self.name])
        self.path = f"/run/netns/{self.name}"
        self.processes: list[Process] = []
        try:
            # Loopback is down in a fresh namespace; nothing works on 127.0.0.1 until it is up.
            self.iproute("link", "set", "lo", "up")
        except BaseException:
            run(["ip", "netns", "del", self.name])
            raise

    def iproute(self, *args: str) -> str:
        """``ip -n <this namespace> <args>``."""
        return run(["ip", "-n", self.name, *args])

    def ip_batch(self, commands: Sequence[str]) -> None:
        """Several ``ip`` commands in one process (``ip -batch``), for speed."""
        run(["ip", "-n", self.name, "-batch", "-"], input_text="\n".join(commands) + "\n")

    def exec_argv(
        self, argv: Sequence[str], *, uid: int | None = None, gid: int | None = None
    ) -> list[str]:
        """``argv`` wrapped to run in this namespace as ``uid``/``gid`` (gid defaults to uid)."""
        wrapped = ["ip", "netns", "exec", self.name]
        if uid is not None:
            group = uid if gid is None else gid
            wrapped += ["setpriv", f"--reuid={uid}", f"--regid={group}", "--clear-groups"]
        return [*wrapped, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        gid: int | None = None,
        timeout: float = 10.0,
    ) -> str:
        return run(self.exec_argv(argv, uid=uid, gid=gid), timeout=timeout)

    def run_result(
        self, argv: Sequence[str], *, uid: int | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Like ``run`` but returns the result, whatever the exit status."""
        return subprocess.run(
            self.exec_argv(argv, uid=uid),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=clean_env(),
        )

    def sysctl(self, settings: Mapping[str, str]) -> None:
        self.run(["sysctl", "-q", "-w", *(f"{key}={value}" for key, value in settings.items())])

    def spawn(
        self,
        argv: Sequence[str],
        *,
        uid: int | None = None,
        env: Mapping[str, str] | None = None,
        capture: bool = True,
        log_path: Path | None = None,
        label: str | None = None,
    ) -> Process:
        """Start ``argv`` in this namespace; it is stopped by ``delete()`` if still running.

        stdout is a pipe when ``capture`` (for a ``ready`` line); stderr goes to ``log_path``
        (kept) or to an anonymous temporary file. ``ip netns exec`` and ``setpriv`` both exec,
        so the PID is the program's own.
        """
        stderr_file: IO[bytes] = (
            # Append mode: the child's writes never depend on the shared file offset.
            open(log_path, "a+b") if log_path is not None else tempfile.TemporaryFile("a+b")  # noqa: SIM115
        )
        try:
            popen = subprocess.Popen(
                self.exec_argv(argv, uid=uid),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                stderr=stderr_file,
                text=True,
                env=clean_env(env),
            )
        except BaseException:
            stderr_file.close()
            raise
        process = Process(popen, label or f"{self.name}: {argv[0]}", stderr_file)
        self.processes.append(process)
        return process

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in this namespace (created under setns on this thread)."""
        with _setns_lock, open("/proc/thread-self/ns/net", "rb") as home:
            with open(self.path, "rb") as target:
                _setns(target.fileno())
            try:
                return socket.socket(family, kind)
            finally:
                _setns(home.fileno())

    def connect(self, address: tuple[str, int], timeout: float = 2.0) -> _Socket:
        """A TCP connection made from inside this namespace (as the calling process's user)."""
        sock = self.socket()
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def enter_thread(self) -> None:
        """Move the calling thread into this namespace for the rest of its life (never call it
        on the main thread: the process's other work stays where it was)."""
        if threading.current_thread() is threading.main_thread():
            raise LocalMeshError("enter_thread() on the main thread")
        with open(self.path, "rb") as target:
            _setns(target.fileno())

    def wait_for_port(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        """Poll until something accepts TCP connections at ``address`` (seen from inside)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                self.connect(address, timeout=0.5).close()
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise LocalMeshError(
                        f"{self.name}: nothing listens on {address}: {exc}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            else:
                return

    def delete(self) -> None:
        """Stop every process started here, then delete the namespace (and its interfaces)."""
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as exc:  # keep cleaning up; report at the end
                errors.append(f"{process.label}: {exc}")
        self.processes.clear()
        try:
            run(["ip", "netns", "del", self.name])
        except LocalMeshError as exc:
            errors.append(str(exc))
        if errors:
            raise LocalMeshError("; ".join(errors))


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")
