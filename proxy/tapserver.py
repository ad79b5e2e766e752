"""The tap server (4190): ``GET /tap?<filters>`` streams the proxy's live requests as NDJSON.

``decide`` is the pure part (method, target, who asks → a ``TapQuery`` or a refusal with its
status); ``serve_tap`` is the Trio/h11 shell. Only loopback clients may tap (403 otherwise):
until authorization by mTLS identity exists, whoever can reach a pod's loopback (its own
containers, ``kubectl port-forward``) is who may see its traffic. One line per event
(``proxy.tap.encode_event``); a ``lost`` line reports the subscriber's cumulative ``dropped`` and
``rate_limited`` counts whenever they change. The session ends when the client closes its end.

Query parameters (each at most once): ``direction`` (``inbound``/``outbound``), ``authority``
(exact, case-insensitive), ``path`` (prefix, starts with ``/``), ``method``, ``status``
(``1xx``..``5xx``), ``max_rps`` (requests per second, default 100).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

import h11
import trio

from meshlet import names
from proxy.settings import PREFIX, Address, ProxySettings, SettingsError, parse_address
from proxy.tap import (
    DEFAULT_MAX_RPS,
    MAX_RPS_LIMIT,
    Subscriber,
    TapFilter,
    TapHub,
    TapLimitError,
    encode_event,
)

__all__ = [
    "TapQuery",
    "TapRefusal",
    "TapSettings",
    "decide",
    "load_tap_settings",
    "parse_tap_query",
    "serve_tap",
]

log = logging.getLogger(__name__)

_MAX_REQUEST: Final = 8192  # bytes of request head; the tap takes no body
_MAX_VALUE: Final = 1024  # longest filter value
_PARAMETERS: Final = frozenset({"direction", "authority", "path", "method", "status", "max_rps"})
_DIRECTIONS: Final = frozenset({"inbound", "outbound"})
_STATUS_CLASSES: Final = {f"{n}xx": n for n in range(1, 6)}
_TEXT: Final = b"text/plain; charset=utf-8"
_NDJSON: Final = b"application/x-ndjson"
_DEFAULT_LISTEN: Final = Address("0.0.0.0", names.PROXY_TAP_PORT)  # noqa: S104


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


def load_tap_settings(settings: ProxySettings) -> TapSettings:
    """The tap's settings from the proxy's (``settings.extra``: ``ProxySettings`` leaves
    ``TAP_LISTEN_ADDR`` to the tap); ``SettingsError`` names a bad variable."""
    text = settings.extra.get("TAP_LISTEN_ADDR")
    if text is None:
        return TapSettings()
    try:
        return TapSettings(listen=parse_address(text))
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}TAP_LISTEN_ADDR: {exc}") from None


@dataclass(frozen=True, slots=True)
class TapQuery:
    filter: TapFilter
    max_rps: float


@dataclass(frozen=True, slots=True)
class TapRefusal:
    status: int
    message: str


class _QueryError(ValueError):
    pass


def parse_tap_query(query: str) -> TapQuery:
    """``direction=inbound&path=/api`` → the filter and rate; ``ValueError`` says what is wrong."""
    try:
        pairs = parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=bool(query),
            max_num_fields=len(_PARAMETERS),
        )
    except ValueError as exc:
        raise _QueryError(f"malformed query string: {exc}") from None
    values: dict[str, str] = {}
    for key, value in pairs:
        if key not in _PARAMETERS:
            raise _QueryError(f"unknown parameter {key!r}; known: {', '.join(sorted(_PARAMETERS))}")
        if key in values:
            raise _QueryError(f"parameter {key!r} given twice")
        if not value or len(value) > _MAX_VALUE:
            raise _QueryError(f"parameter {key!r} must have 1 to {_MAX_VALUE} characters")
        values[key] = value
    direction = values.get("direction")
    if direction is not None and direction not in _DIRECTIONS:
        raise _QueryError("direction must be inbound or outbound")
    path = values.get("path")
    if path is not None and not path.startswith("/"):
        raise _QueryError("path must start with /")
    method = values.get("method")
    if method is not None and not (method.isascii() and method.isalpha()):
        raise _QueryError("method must be letters, such as GET")
    status = values.get("status")
    if status is not None and status.lower() not in _STATUS_CLASSES:
        raise _QueryError("status must be a class: 1xx, 2xx, 3xx, 4xx or 5xx")
    authority = values.get("authority")
    tap_filter = TapFilter(
        direction=direction,
        authority=authority.lower().encode() if authority is not None else None,
        path_prefix=path.encode() if path is not None else None,
        method=method.upper().encode() if method is not None else None,
        status_class=_STATUS_CLASSES[status.lower()] if status is not None else None,
    )
    return TapQuery(tap_filter, _max_rps(values.get("max_rps")))


def _max_rps(text: str | None) -> float:
    if text is None:
        return DEFAULT_MAX_RPS
    try:
        rate = float(text)
    except ValueError:
        raise _QueryError(f"max_rps {text!r} is not a number") from None
    if not 0 < rate <= MAX_RPS_LIMIT:  # also rejects nan
        raise _QueryError(f"max_rps must be more than 0 and at most {MAX_RPS_LIMIT:g}")
    return rate


def decide(method: bytes, target: bytes, *, peer_loopback: bool) -> TapQuery | TapRefusal:
    """What the tap server does with ``method target`` from a (non-)loopback peer."""
    path, _, query = target.partition(b"?")
    if not peer_loopback:
        return TapRefusal(403, "tap is only served to clients on loopback")
    if path != b"/tap":
        return TapRefusal(404, "not found; the tap is GET /tap")
    if method != b"GET":
        return TapRefusal(405, "method not allowed; use GET")
    try:
        return parse_tap_query(query.decode("ascii"))
    except UnicodeDecodeError:
        return TapRefusal(400, "the query string must be ASCII (percent-encoded)")
    except ValueError as exc:
        return TapRefusal(400, str(exc))


def _is_loopback(address: object) -> bool:
    try:
        host = address[0] if isinstance(address, tuple) else str(address)
        ip = ipaddress.ip_address(host)
    except (ValueError, IndexError):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


async def serve_tap(
    hub: TapHub,
    settings: TapSettings,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the tap until cancelled."""
    listeners = await trio.open_tcp_listeners(settings.listen.port, host=settings.listen.host)
    bound = listeners[0].socket.getsockname()
    log.info("tap listener on %s:%s", bound[0], bound[1])
    task_status.started((bound[0], bound[1]))

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, hub, settings)
        except (trio.TooSlowError, trio.BrokenResourceError, OSError, h11.ProtocolError) as exc:
            log.debug("tap connection ended: %s", exc)
        except Exception:
            # A bug must cost one tap session, never the tap server (or the proxy around it).
            log.exception("tap connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


async def _serve_connection(stream: trio.SocketStream, hub: TapHub, settings: TapSettings) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
    try:
        with trio.fail_after(settings.request_timeout):
            request = await _read_request(stream, connection)
    except h11.RemoteProtocolError as exc:
        await _refuse(
            stream, connection, TapRefusal(exc.error_status_hint, "malformed HTTP/1.1 request")
        )
        return
    if request is None:
        return
    decision = decide(
        request.method, request.target, peer_loopback=_is_loopback(stream.socket.getpeername())
    )
    if isinstance(decision, TapRefusal):
        await _refuse(stream, connection, decision)
        return
    try:
        subscriber = hub.subscribe(decision.filter, max_rps=decision.max_rps)
    except TapLimitError as exc:
        await _refuse(stream, connection, TapRefusal(503, str(exc)))
        return
    peer = stream.socket.getpeername()
    log.info("tap session from %s:%s: %s", peer[0], peer[1], request.target.decode("ascii"))
    try:
        await _stream_events(stream, connection, subscriber, settings)
    finally:
        hub.unsubscribe(subscriber)
        log.info(
            "tap session from %s:%s ended (%d dropped, %d rate-limited)",
            peer[0],
            peer[1],
            subscriber.dropped,
            subscriber.rate_limited,
        )


async def _read_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> h11.Request | None:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(_MAX_REQUEST))
            continue
        return event if isinstance(event, h11.Request) else None


async def _refuse(
    stream: trio.SocketStream, connection: h11.Connection, refusal: TapRefusal
) -> None:
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
    stream: trio.SocketStream,
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


async def _cancel_on_client_close(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """The client sends nothing after its request: any read result means it is gone."""
    try:
        while await stream.receive_some(_MAX_REQUEST):
            pass
    except (trio.BrokenResourceError, OSError):
        pass
    scope.cancel()
