"""Run ``meshlet-destination`` as a real process over real TLS, and read its streams with curl."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlet.devcert import write_self_signed
from meshlet.names import control_plane_identity

DESTINATION_NAME = control_plane_identity("destination")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; "
    "from destination.__main__ import main; sys.exit(main())"
)


@dataclass
class DestinationProcess:
    directory: Path
    yaml_file: Path
    port: int
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    without_uvloop: bool = False  # run on asyncio's own event loop (uvloop made unimportable)

    @property
    def ca(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        run = ["-m", "destination"]
        if self.without_uvloop:
            run = ["-c", _WITHOUT_UVLOOP]
        argv = [
            sys.executable,
            *run,
            "--source",
            str(self.yaml_file),
            "--tls-cert-file",
            str(self.directory / "tls.crt"),
            "--tls-key-file",
            str(self.directory / "tls.key"),
            "--listen-addr",
            f"127.0.0.1:{self.port}",
            "--local-poll-interval",
            "20ms",
            "--keepalive-interval",
            "1s",
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHLET_")}
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"destination exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError("destination did not become ready")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise
        finally:
            if self.process.stderr is not None:
                self.process.stderr.close()

    def get(self, path: str) -> tuple[int, str]:
        """A one-shot GET (non-streaming paths), with the CA pinned."""
        context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        except OSError:
            return (0, "")
        head, _, body = data.partition(b"\r\n\r\n")
        return (int(head.split()[1]), body.decode(errors="replace"))


@contextmanager
def destination(
    tmp: Path, yaml_text: str, extra_args: list[str] | None = None, *, without_uvloop: bool = False
) -> Iterator[DestinationProcess]:
    write_self_signed(tmp, ["localhost", "127.0.0.1", DESTINATION_NAME])
    yaml_file = tmp / "local.yaml"
    yaml_file.write_text(yaml_text)
    server = DestinationProcess(
        tmp, yaml_file, free_port(), extra_args or [], without_uvloop=without_uvloop
    )
    try:
        server.start()
        yield server
    finally:
        server.stop(signal.SIGKILL)


def write_yaml(path: Path, text: str) -> None:
    """Replace the file atomically, as an editor or a ConfigMap update would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CurlStream:
    """``curl -N`` reading an NDJSON stream; lines are parsed by a reader thread."""

    def __init__(self, server: DestinationProcess, path: str) -> None:
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.process = subprocess.Popen(
            ["curl", "-sS", "-N", "--cacert", str(server.ca), server.base + path],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout: float = 10, *, skip_keepalive: bool = True) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None or not skip_keepalive or line.get("type") != "keepalive":
                return line

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
