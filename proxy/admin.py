"""The admin server (4191): ``/metrics``, ``/live``, ``/ready``, ``/shutdown``, as Linkerd's.

``answer`` is the pure decision (method, path, who asks, process state → status, body, action);
``serve_admin`` is the Trio/h11 shell around it. ``/shutdown`` is refused with 404 unless
``MESHLET_PROXY_SHUTDOWN_ENDPOINT_ENABLED`` is true, and with 403 for a client that is not on
loopback (any process in the pod may stop its proxy, nobody else); it starts the same drain as
SIGTERM. ``/ready`` is also 503 while identity is configured and no certificate has arrived
(Linkerd's rule: a proxy that cannot do mTLS takes no traffic); ``/live`` is unaffected.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Final

import h11
import trio

from proxy.context import ProxyContext
from proxy.metrics import Metrics
from proxy.tlsglue import MeshTls

__all__ = ["AdminAnswer", "answer", "serve_admin"]

log = logging.getLogger(__name__)

_TEXT: Final = b"text/plain; charset=utf-8"
_METRICS_TYPE: Final = Metrics.content_type.encode()
_MAX_REQUEST: Final = 8192  # bytes of request head; the admin API takes no bodies


@dataclass(frozen=True, slots=True)
class AdminAnswer:
    status: int
    body: bytes
    content_type: bytes = _TEXT
    shutdown: bool = False
    metrics: bool = False
    """The body is the metrics exposition, rendered by the shell."""


def answer(  # noqa: PLR0911 (one return per route reads best)
    method: bytes, path: bytes, *, peer_loopback: bool, ready: bool, shutdown_enabled: bool
) -> AdminAnswer:
    """What the admin server replies to ``method path`` (the query string is ignored)."""
    route = path.split(b"?", 1)[0]
    reads = method in {b"GET", b"HEAD"}
    if route == b"/live":
        return AdminAnswer(200, b"live\n") if reads else _not_allowed(b"GET")
    if route == b"/ready":
        if not reads:
            return _not_allowed(b"GET")
        return AdminAnswer(200, b"ready\n") if ready else AdminAnswer(503, b"not ready\n")
    if route == b"/metrics":
        return AdminAnswer(200, b"", metrics=True) if reads else _not_allowed(b"GET")
    if route == b"/shutdown":
        if not shutdown_enabled:
            return AdminAnswer(404, b"shutdown endpoint is not enabled\n")
        if method != b"POST":
            return _not_allowed(b"POST")
        if not peer_loopback:
            return AdminAnswer(403, b"shutdown is only allowed from localhost\n")
        return AdminAnswer(200, b"shutdown\n", shutdown=True)
    return AdminAnswer(404, b"not found\n")


def _not_allowed(allowed: bytes) -> AdminAnswer:
    return AdminAnswer(405, b"method not allowed; use " + allowed + b"\n")


def _is_loopback(address: object) -> bool:
    try:
        host = address[0] if isinstance(address, tuple) else str(address)
        return ipaddress.ip_address(host).is_loopback
    except (ValueError, IndexError):
        return False


async def serve_admin(
    context: ProxyContext,
    *,
    mesh: MeshTls | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin API until cancelled (it outlives draining so probes see ``not ready``)."""
    mesh = mesh or MeshTls()
    listen = context.settings.admin_listen
    listeners = await trio.open_tcp_listeners(listen.port, host=listen.host)
    bound = listeners[0].socket.getsockname()
    log.info("admin listener on %s:%s", bound[0], bound[1])
    task_status.started((bound[0], bound[1]))

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(context.settings.admin_request_timeout):
                await _serve_one_connection(stream, context, mesh)
        except (trio.TooSlowError, trio.BrokenResourceError, OSError, h11.ProtocolError) as exc:
            log.debug("admin connection ended: %s", exc)
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


async def _serve_one_connection(
    stream: trio.SocketStream, context: ProxyContext, mesh: MeshTls
) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
    peer_loopback = _is_loopback(stream.socket.getpeername())
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(_MAX_REQUEST))
            continue
        if not isinstance(event, h11.Request):
            return
        reply = answer(
            event.method,
            event.target,
            peer_loopback=peer_loopback,
            ready=context.lifecycle.ready and mesh.ready,
            shutdown_enabled=context.settings.shutdown_endpoint_enabled,
        )
        body = context.metrics.render() if reply.metrics else reply.body
        content_type = (
            context.metrics.content_type.encode() if reply.metrics else reply.content_type
        )
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if not await _discard_body(stream, connection):
            return
        data = connection.send(h11.Response(status_code=reply.status, headers=headers))
        if event.method != b"HEAD":
            data += connection.send(h11.Data(data=body))
        data += connection.send(h11.EndOfMessage())
        await stream.send_all(data)
        if reply.shutdown:
            log.info("shutdown requested through the admin endpoint")
            context.lifecycle.drain()
        if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
            return
        connection.start_next_cycle()


async def _discard_body(stream: trio.SocketStream, connection: h11.Connection) -> bool:
    """Read past a request body (the admin API ignores bodies); ``False`` if it is too long."""
    seen = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_MAX_REQUEST)
            if not data:
                return False
            connection.receive_data(data)
        elif isinstance(event, h11.Data):
            seen += len(event.data)
            if seen > _MAX_REQUEST:
                return False
        else:
            return isinstance(event, h11.EndOfMessage) or event is h11.PAUSED
