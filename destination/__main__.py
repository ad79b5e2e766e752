"""``meshlet-destination``: serve endpoint and profile streams to the proxies."""

from __future__ import annotations

import asyncio.sslproto
import logging
import os
import sys

from meshlet.devcert import write_self_signed
from meshlet.logs import configure_logging
from meshlet.names import control_plane_identity
from meshlet.tlsserve import (
    ListenError,
    ReloadingServerTLS,
    TLSFilesError,
    listen_socket,
    serve_app,
)

from .app import create_app
from .events import ObjectSource
from .local import LocalFileSource
from .settings import DestinationSettings, SettingsError, load_settings
from .shutdown import install_early_handlers

__all__ = ["main"]

log = logging.getLogger("meshlet.destination")


class _StartupError(RuntimeError):
    pass


def _source(settings: DestinationSettings) -> ObjectSource:
    path = settings.local_file
    if path is not None:
        if not path.is_file():
            raise _StartupError(f"source: {path} is not a readable file")
        return LocalFileSource(
            path,
            control_plane_ns=settings.control_plane_ns,
            poll_interval=settings.local_poll_interval,
        )
    from .kube import kubernetes_source  # noqa: PLC0415 (kubernetes-asyncio only when used)

    try:
        return kubernetes_source(settings)
    except ValueError as error:
        raise _StartupError(f"kubernetes: {error}") from None


def _small_tls_read_buffers() -> None:
    """Give each TLS connection a 32 KiB read buffer instead of asyncio's 256 KiB.

    asyncio's ``SSLProtocol`` allocates ``max_size`` bytes per connection for reads. This
    server holds thousands of long-lived streams that receive one small request each, so those
    buffers would be most of its memory (1,000 streams: ~250 MB). 32 KiB still holds two
    full TLS records. (uvloop's own TLS protocol mallocs its buffer without touching it, so
    there the untouched pages cost no memory either.)
    """
    asyncio.sslproto.SSLProtocol.max_size = 32 * 1024


def _event_loop() -> str:
    """uvloop when it is installed (its TLS and socket writes are compiled), else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415 (optional)
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings, self_signed = load_settings(args, os.environ)
        configure_logging(settings.log_level, settings.log_format)
        if self_signed is not None:
            names = [
                "localhost",
                "127.0.0.1",
                control_plane_identity(
                    "destination",
                    control_plane_ns=settings.control_plane_ns,
                    trust_domain=settings.trust_domain,
                ),
            ]
            write_self_signed(self_signed, names)
        tls = ReloadingServerTLS(settings.tls_cert, settings.tls_key)
        source = _source(settings)
    except (SettingsError, TLSFilesError, _StartupError, ValueError, OSError) as error:
        print(f"meshlet-destination: {error}", file=sys.stderr)
        return 2
    try:
        sock = listen_socket(settings.listen_host, settings.listen_port, backlog=2048)
    except ListenError as error:
        print(f"meshlet-destination: {error}", file=sys.stderr)
        return 1
    _small_tls_read_buffers()
    host, port = sock.getsockname()[:2]
    log.info(
        "serving on %s:%d, source %s, event loop %s",
        host,
        port,
        settings.source,
        _event_loop(),
    )
    app = create_app(settings, source, handle_signals=True)
    install_early_handlers()  # a graceful stop on SIGTERM exits 0, not -15
    level = os.environ.get("MESHLET_UVICORN_LOG_LEVEL", "warning")
    try:
        asyncio.run(serve_app(app, host=host, port=port, tls=tls, sockets=[sock], log_level=level))
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
