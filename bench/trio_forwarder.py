"""A minimal Trio TCP forwarder, optionally over mutual TLS: the benches' reference for Trio.

    python bench/trio_forwarder.py [--accept-tls CERT KEY CA] [--connect-tls CERT KEY CA NAME]
                                   LISTEN=TARGET [LISTEN=TARGET ...]

Each ``LISTEN=TARGET`` pair (``host:port=host:port``) accepts connections on ``LISTEN`` and
copies bytes both ways to a new connection to ``TARGET`` (one upstream connection per client
connection, 64 KiB reads, trio's own streams: ``SocketStream``, ``SSLStream``). No parsing, no
pooling, no metrics: what any proxy written on Trio pays at least to move the same requests,
measured in the same run as meshlet-proxy (``bench proxy``: plaintext; ``bench mesh``: a pair
of these with mutual TLS between them, TLS 1.3, each side's certificate verified against
``CA``, the server's against ``NAME``).

Standalone on purpose (only trio and ssl): it runs in the benches' network namespaces with the
interpreter alone.
"""

from __future__ import annotations

import functools
import ssl
import sys
from typing import Any

import trio

_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _context(cert: str, key: str, ca: str, *, server: bool) -> ssl.SSLContext:
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except _ERRORS:
        pass


async def _handle(
    target: tuple[str, int],
    accept: ssl.SSLContext | None,
    connect: tuple[ssl.SSLContext, str] | None,
    client: trio.SocketStream,
) -> None:
    downstream: trio.abc.Stream = client
    try:
        if accept is not None:
            downstream = trio.SSLStream(client, accept, server_side=True)
            await downstream.do_handshake()
        upstream: trio.abc.Stream = await trio.open_tcp_stream(*target)
        if connect is not None:
            context, name = connect
            upstream = trio.SSLStream(upstream, context, server_hostname=name)
            await upstream.do_handshake()
    except _ERRORS:
        await trio.aclose_forcefully(downstream)
        return
    async with downstream, upstream, trio.open_nursery() as nursery:
        nursery.start_soon(_pump, downstream, upstream)
        nursery.start_soon(_pump, upstream, downstream)


async def _main(argv: list[str]) -> None:
    accept: ssl.SSLContext | None = None
    connect: tuple[ssl.SSLContext, str] | None = None
    pairs: list[tuple[tuple[str, int], tuple[str, int]]] = []
    args = iter(argv)
    for arg in args:
        if arg == "--accept-tls":
            accept = _context(next(args), next(args), next(args), server=True)
        elif arg == "--connect-tls":
            context = _context(next(args), next(args), next(args), server=False)
            connect = (context, next(args))
        else:
            listen, _, upstream = arg.partition("=")
            pairs.append((_address(listen), _address(upstream)))
    if not pairs:
        raise SystemExit(__doc__)
    async with trio.open_nursery() as nursery:
        for (host, port), target in pairs:
            handler: Any = functools.partial(_handle, target, accept, connect)
            nursery.start_soon(functools.partial(trio.serve_tcp, handler, port, host=host))


if __name__ == "__main__":
    trio.run(_main, sys.argv[1:])
