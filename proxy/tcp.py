"""Opaque TCP: copy bytes both ways until both sides have finished, respecting half-close.

Each direction is one task reading with a bounded buffer (``RECEIVE_SIZE``) and writing before it
reads again, so a slow reader slows the writer down (TCP backpressure, no queue in between). When
one side sends end-of-stream the other side gets a ``shutdown(SHUT_WR)`` and the opposite direction
keeps flowing (half-close, as in ``nc -N``/``shutdown``-based protocols). When either side fails
(reset, error) the other side is reset too, so neither peer mistakes a broken exchange for a
complete one.
"""

from __future__ import annotations

import logging

import trio

from proxy.errors import ProxyError, unwrap_groups
from proxy.net import Conn

__all__ = ["splice"]

log = logging.getLogger(__name__)


async def splice(client: Conn, upstream: Conn, *, prefix: bytes = b"") -> None:
    """Forward ``prefix`` (bytes already read from the client), then everything, both ways.

    Returns when both directions reached end-of-stream (both connections are then closed), or
    after resetting both connections when either one failed.
    """
    try:
        if prefix:
            await upstream.send(prefix)
        with unwrap_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream)
                nursery.start_soon(_pump, upstream, client)
    except ProxyError as exc:
        log.debug("opaque connection ended with an error: %s", exc)
        client.abort()
        upstream.abort()
        return
    client.close()
    upstream.close()


async def _pump(source: Conn, sink: Conn) -> None:
    while True:
        data = await source.receive()
        if not data:
            await sink.send_eof()
            return
        await sink.send(data)
