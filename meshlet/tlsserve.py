"""Serve a FastAPI (ASGI) app on uvicorn over TLS, reloading the certificate when it changes.

Theory of operation: uvicorn is given one ``ssl.SSLContext`` at start. Its ``sni_callback``,
which OpenSSL runs for every ClientHello, checks at most every ``check_interval`` seconds
whether the certificate or key file changed on disk (mtime, size, inode: a Kubernetes Secret
update swaps a symlink, which changes the inode). If so it builds a fresh context and moves the
handshake onto it. A file pair that fails to load (half-written, mismatched) is logged and the
previous certificate keeps serving, so a bad rotation never takes the server down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "ListenError",
    "ReloadingServerTLS",
    "TLSFilesError",
    "listen_socket",
    "run_app",
    "serve_app",
]

log = logging.getLogger("meshlet.tls")


class TLSFilesError(RuntimeError):
    """The certificate or key could not be loaded; the message names the files and the cause."""


class ListenError(RuntimeError):
    """The listening socket cannot be made; the message is one line for the operator."""


def listen_socket(host: str, port: int, *, backlog: int) -> socket.socket:
    """The listening socket, bound before anything is logged or served: a port in use or an
    address this machine does not have is one line at start-up, not uvicorn's exit status 3
    after a misleading "serving" line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except (OSError, UnicodeError) as error:  # UnicodeError: a name the idna codec refuses
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = getattr(error, "strerror", None) or "not an address of this machine"
        raise ListenError(f"cannot listen on {where}: {reason}") from None
    return sock


@dataclass(frozen=True, slots=True)
class _Stamp:
    cert: tuple[float, int, int]
    key: tuple[float, int, int]


def _stamp(path: Path) -> tuple[float, int, int]:
    info = path.stat()
    return (info.st_mtime, info.st_size, info.st_ino)


def _diagnose(certfile: Path, keyfile: Path, error: OSError) -> str:
    """Which file is wrong and why, in words (OpenSSL says only "PEM lib" for either)."""
    if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"the key does not belong to the certificate ({error})"
    for path, what in ((certfile, "certificate"), (keyfile, "private key")):
        try:
            data = path.read_bytes()
        except OSError as problem:
            return f"cannot read the {what} {path}: {problem.strerror}"
        try:
            if what == "certificate":
                x509.load_pem_x509_certificates(data)
            else:
                serialization.load_pem_private_key(data, password=None)
        except TypeError:
            return f"the key {path} is encrypted; it must be unencrypted PEM"
        except ValueError:
            return f"{path} holds no PEM {what}"
    return str(error)


class ReloadingServerTLS:
    """A server-side TLS context (TLS 1.2+) whose certificate follows the files on disk."""

    def __init__(
        self,
        certfile: Path,
        keyfile: Path,
        *,
        client_ca: Path | None = None,
        check_interval: float = 2.0,
    ) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self.client_ca = client_ca
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._current = self._build()
        self._stamp = self._read_stamp()
        self._next_check = time.monotonic() + check_interval
        self.reloads = 0
        self._outer = self._current
        self._outer.sni_callback = self._on_client_hello

    @property
    def context(self) -> ssl.SSLContext:
        """The context to hand to the server; handshakes move to the newest certificate."""
        return self._outer

    def _read_stamp(self) -> _Stamp:
        return _Stamp(cert=_stamp(self.certfile), key=_stamp(self.keyfile))

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
            if self.client_ca is not None:
                context.load_verify_locations(self.client_ca)
                context.verify_mode = ssl.CERT_OPTIONAL
        except (OSError, ssl.SSLError) as error:
            reason = _diagnose(self.certfile, self.keyfile, error)
            raise TLSFilesError(
                f"cannot load TLS certificate {self.certfile} with key {self.keyfile}: {reason}"
            ) from error
        return context

    def reload_if_changed(self) -> bool:
        """Rebuild the context if the files changed; return whether it was replaced."""
        with self._lock:
            now = time.monotonic()
            if now < self._next_check:
                return False
            self._next_check = now + self.check_interval
            try:
                stamp = self._read_stamp()
            except OSError as error:
                log.error("TLS files unreadable, keeping the current certificate: %s", error)
                return False
            if stamp == self._stamp:
                return False
            try:
                fresh = self._build()
            except TLSFilesError as error:
                log.error("%s; keeping the current certificate", error)
                return False
            self._current = fresh
            self._stamp = stamp
            self.reloads += 1
            log.info("reloaded TLS certificate from %s", self.certfile)
            return True

    def _on_client_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: Any
    ) -> None:
        self.reload_if_changed()
        current = self._current
        if current is not self._outer:
            connection.context = current


async def serve_app(
    app: Any,
    *,
    host: str,
    port: int,
    tls: ReloadingServerTLS,
    sockets: list[socket.socket] | None = None,
    log_level: str = "warning",
    started: asyncio.Event | None = None,
    shutdown: asyncio.Event | None = None,
) -> None:
    """Run ``app`` until SIGINT/SIGTERM or until ``shutdown`` is set; both stop it gracefully.

    ``started`` is set once the server listens, so callers need not sleep and poll.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    config.load()
    config.ssl = tls.context
    server = uvicorn.Server(config)

    async def watch() -> None:
        while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
            await asyncio.sleep(0.01)
        if started is not None:
            started.set()
        if shutdown is not None:
            await shutdown.wait()
            server.should_exit = True

    watcher = asyncio.ensure_future(watch())
    try:
        await server.serve(sockets=sockets)
    finally:
        watcher.cancel()


def run_app(app: Any, *, host: str, port: int, tls: ReloadingServerTLS) -> None:
    """Blocking entry point for the components' ``main()``."""
    level = os.environ.get("MESHLET_UVICORN_LOG_LEVEL", "warning")
    asyncio.run(serve_app(app, host=host, port=port, tls=tls, log_level=level))
