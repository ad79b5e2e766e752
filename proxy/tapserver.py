"""The tap server (4190): ``GET /tap?<filters>`` streams the proxy's live requests as NDJSON.

``decide`` is the pure part (method, target, who asks → a ``TapQuery`` or a refusal with its
status); ``serve_tap`` is the Trio/h11 shell. Who may tap (403 otherwise), as Linkerd's rule
that tap is served only to the identity in ``LINKERD2_PROXY_TAP_SVC_NAME``:

- a client that proved a mesh identity over mTLS (a connection starting with a TLS handshake,
  terminated with this proxy's certificate, client certificate verified against the trust
  anchors) when that identity is in ``MESHLET_PROXY_TAP_AUTHORIZED_IDENTITIES``;
- a plaintext (or certificate-less TLS) client on loopback: whoever can reach a pod's loopback
  (its own containers, ``kubectl port-forward``).

One line per event
(``proxy.tap.encode_event``); a ``lost`` line reports the subscriber's cumulative ``dropped`` and
``rate_limited`` counts whenever they change. The session ends when the client closes its end.

Query parameters (each at most once): ``direction`` (``inbound``/``outbound``), ``authority``
(exact, case-insensitive), ``path`` (prefix, starts with ``/``), ``method``, ``status``
(``1xx``..``5xx``), ``max_rps`` (requests per second, default 100).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import h11
import trio

from meshlet import names
from proxy.identity.tls import peer_identity
from proxy.mtls.streams import PrefixedStream
from proxy.settings import PREFIX, Address, ProxySettings, SettingsError, parse_address
from proxy.tap import Subscriber, TapHub, TapLimitError, encode_event
from proxy.tapdecide import (
    TapQuery,
    TapRefusal,
    decide,
    is_loopback,
    parse_identities,
    parse_tap_query,
)

__all__ = [
    "TapQuery",
    "TapRefusal",
    "TapSettings",
    "TapTlsContext",
    "decide",
    "load_tap_settings",
    "parse_identities",
    "parse_tap_query",
    "serve_tap",
]

log = logging.getLogger(__name__)

_MAX_REQUEST: Final = 8192  # bytes of request head; the tap takes no body
_TEXT: Final = b"text/plain; charset=utf-8"
_NDJSON: Final = b"application/x-ndjson"
_DEFAULT_LISTEN: Final = Address("0.0.0.0", names.PROXY_TAP_PORT)  # noqa: S104
_TLS_HANDSHAKE: Final = 0x16  # the first byte of a TLS record carrying a ClientHello
TapTlsContext = Callable[[], ssl.SSLContext | None]
"""The server context for mTLS tap clients (``IdentityClient.tap_server_context``: this proxy's
certificate, client certificates verified but optional); ``None`` while there is no certificate."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TapSettings:
    listen: Address = _DEFAULT_LISTEN
    """``MESHLET_PROXY_TAP_LISTEN_ADDR``; all interfaces like Linkerd's 4190, but only loopback
    peers are served, so ``kubectl port-forward`` works and other pods get 403."""
    request_timeout: float = 10.0
    """Seconds to read the request head: a real client sends it at once."""
    write_timeout: float = 30.0
    """Seconds one write may block on a client that stopped reading before the session ends
    (meanwhile its buffer fills and events are dropped, never the proxy slowed)."""
    authorized_identities: frozenset[str] = field(default_factory=frozenset)
    """``MESHLET_PROXY_TAP_AUTHORIZED_IDENTITIES``: mesh identities that may tap over mTLS from
    anywhere (Linkerd's ``LINKERD2_PROXY_TAP_SVC_NAME``, as a list). Empty: loopback only."""


def load_tap_settings(settings: ProxySettings) -> TapSettings:
    """The tap's settings from the proxy's (``settings.extra``: ``ProxySettings`` leaves
    ``TAP_*`` to the tap); ``SettingsError`` names a bad variable."""
    values: dict[str, object] = {}
    text = settings.extra.get("TAP_LISTEN_ADDR")
    if text is not None:
        try:
            values["listen"] = parse_address(text)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}TAP_LISTEN_ADDR: {exc}") from None
    text = settings.extra.get("TAP_AUTHORIZED_IDENTITIES")
    if text is not None:
        try:
            values["authorized_identities"] = parse_identities(text)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}TAP_AUTHORIZED_IDENTITIES: {exc}") from None
    return TapSettings(**values)  # type: ignore[arg-type]


async def serve_tap(
    hub: TapHub,
    settings: TapSettings,
    *,
    tls_context: TapTlsContext | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the tap until cancelled; ``tls_context`` (identity on) lets mTLS clients in."""
    listeners = await trio.open_tcp_listeners(settings.listen.port, host=settings.listen.host)
    bound = listeners[0].socket.getsockname()
    log.info("tap listener on %s:%s", bound[0], bound[1])
    task_status.started((bound[0], bound[1]))

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, hub, settings, tls_context)
        except (trio.TooSlowError, trio.BrokenResourceError, OSError, h11.ProtocolError) as exc:
            log.debug("tap connection ended: %s", exc)
        except Exception:
            # A bug must cost one tap session, never the tap server (or the proxy around it).
            log.exception("tap connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


@dataclass(slots=True)
class _Client:
    """One tap connection: the stream to speak HTTP on (TLS or not) and who is at the end."""

    stream: trio.abc.Stream
    peer: tuple[str, int]
    client_id: str | None = None


async def _accept(
    stream: trio.SocketStream, tls_context: TapTlsContext | None
) -> tuple[_Client, bytes] | None:
    """Read the first bytes; a TLS handshake is terminated (client certificate optional, verified
    when sent). ``None``: the client closed, or sent TLS this proxy cannot serve."""
    peer = stream.socket.getpeername()
    client = _Client(stream, (str(peer[0]), int(peer[1])))
    first = bytes(await stream.receive_some(_MAX_REQUEST))
    if not first or first[0] != _TLS_HANDSHAKE:
        return (client, first) if first else None
    context = tls_context() if tls_context is not None else None
    if context is None:
        log.info("TLS tap connection from %s:%s: no certificate to serve it with", *client.peer)
        return None
    tls = trio.SSLStream(PrefixedStream(first, stream), context, server_side=True)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        log.info("TLS tap connection from %s:%s refused: %s", *client.peer, exc.__cause__ or exc)
        return None
    client.stream = tls
    client.client_id = peer_identity(tls)
    return client, b""


async def _serve_connection(
    stream: trio.SocketStream,
    hub: TapHub,
    settings: TapSettings,
    tls_context: TapTlsContext | None,
) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
    try:
        with trio.fail_after(settings.request_timeout):
            accepted = await _accept(stream, tls_context)
            if accepted is None:
                return
            client, first = accepted
            if first:  # b"" would tell h11 the client closed
                connection.receive_data(first)
            request = await _read_request(client.stream, connection)
    except h11.RemoteProtocolError as exc:
        refusal = TapRefusal(exc.error_status_hint, "malformed HTTP/1.1 request")
        await _refuse(client.stream, connection, refusal)
        return
    if request is None:
        return
    decision = decide(
        request.method,
        request.target,
        peer_loopback=is_loopback(client.peer),
        client_id=client.client_id,
        authorized=settings.authorized_identities,
    )
    if isinstance(decision, TapRefusal):
        if decision.status == 403:
            who = client.client_id or "no mesh identity"
            log.info("tap refused to %s:%s (%s): %s", *client.peer, who, decision.message)
        await _refuse(client.stream, connection, decision)
        return
    try:
        subscriber = hub.subscribe(decision.filter, max_rps=decision.max_rps)
    except TapLimitError as exc:
        await _refuse(client.stream, connection, TapRefusal(503, str(exc)))
        return
    who = f" ({client.client_id})" if client.client_id else ""
    target = request.target.decode("ascii")
    log.info("tap session from %s:%s%s: %s", *client.peer, who, target)
    try:
        await _stream_events(client.stream, connection, subscriber, settings)
    finally:
        hub.unsubscribe(subscriber)
        log.info(
            "tap session from %s:%s ended (%d dropped, %d rate-limited)",
            *client.peer,
            subscriber.dropped,
            subscriber.rate_limited,
        )


async def _read_request(stream: trio.abc.Stream, connection: h11.Connection) -> h11.Request | None:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(_MAX_REQUEST)))
            continue
        return event if isinstance(event, h11.Request) else None


async def _refuse(stream: trio.abc.Stream, connection: h11.Connection, refusal: TapRefusal) -> None:
    body = f"{refusal.message}\n".encode()
    headers = [
        (b"content-type", _TEXT),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    data = connection.send(h11.Response(status_code=refusal.status, headers=headers))
    data += connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage())
    await stream.send_all(data)


class _Waker:
    """Bridges the hub's synchronous ``notify`` to a Trio wait."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def set(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()
        self.event = trio.Event()


async def _stream_events(
    stream: trio.abc.Stream,
    connection: h11.Connection,
    subscriber: Subscriber,
    settings: TapSettings,
) -> None:
    headers = [(b"content-type", _NDJSON), (b"cache-control", b"no-store")]
    await stream.send_all(connection.send(h11.Response(status_code=200, headers=headers)))
    waker = _Waker()
    subscriber.notify = waker.set
    reported = (0, 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_client_close, stream, nursery.cancel_scope)
        while True:
            events = subscriber.take()
            losses = (subscriber.dropped, subscriber.rate_limited)
            if not events and losses == reported:
                await waker.wait()
                continue
            lines = [encode_event(event) for event in events]
            if losses != reported:
                reported = losses
                lost = {"event": "lost", "dropped": losses[0], "rate_limited": losses[1]}
                lines.append(json.dumps(lost, separators=(",", ":")).encode() + b"\n")
            data = connection.send(h11.Data(data=b"".join(lines)))
            # Errors end the session here: inside the nursery they would leave it as a group.
            try:
                with trio.fail_after(settings.write_timeout):
                    await stream.send_all(data)
            except trio.TooSlowError:
                log.info("tap client stopped reading for %gs: closing", settings.write_timeout)
                nursery.cancel_scope.cancel()
                return
            except (trio.BrokenResourceError, OSError) as exc:
                log.debug("tap client gone: %s", exc)
                nursery.cancel_scope.cancel()
                return


async def _cancel_on_client_close(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """The client sends nothing after its request: any read result means it is gone."""
    try:
        while await stream.receive_some(_MAX_REQUEST):
            pass
    except (trio.BrokenResourceError, OSError):
        pass
    scope.cancel()
