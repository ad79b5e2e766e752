"""The client's Trio shell: one long-lived HTTPS request per authority, reopened forever.

Theory of operation: each subscription runs one task that connects (TCP, then TLS verified
against the trust anchors with the destination's identity as the server name), sends
``GET /v1/endpoints?authority=...`` with h11, and feeds the response body through the sans-IO
trackers in ``state.py``. When the stream breaks, goes silent for ``idle_timeout`` or the server
closes it, the task backs off (doubling, jittered) and reconnects. The view keeps the last known
endpoints the whole time: only a new snapshot from the server replaces them, so a control-plane
restart never empties a proxy's balancer. A 4xx answer is final (the authority will never be
valid); it is recorded in the view's ``error`` and the task ends.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

import h11
import trio

from .settings import DiscoverySettings
from .state import (
    EndpointSet,
    EndpointTracker,
    LineSplitter,
    ProfileState,
    ProfileTracker,
    ServerProtocolError,
    parse_line,
)

__all__ = ["DiscoveryClient", "EndpointView", "ProfileView", "View"]

log = logging.getLogger("meshlet.proxy.discovery")

_MAX_ERROR_BODY = 4096


class _Tracker(Protocol):
    @property
    def current(self) -> Any: ...

    def apply(self, message: dict[str, Any]) -> bool: ...

    def set_connection(self, *, connected: bool, error: str | None = None) -> bool: ...


S = TypeVar("S", EndpointSet, ProfileState)


class _Refused(Exception):
    """The server answered with a status other than 200."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class View(Generic[S]):
    """The latest state of one subscription, and a way to wait for the next one."""

    def __init__(self, authority: str, tracker: _Tracker) -> None:
        self.authority = authority
        self._tracker = tracker
        self._changed = trio.Event()
        self._first = trio.Event()

    def current(self) -> S:
        """The latest state; never blocks. Endpoints survive disconnections."""
        state: S = self._tracker.current
        return state

    async def wait_changed(self, version: int) -> S:
        """Wait until ``current().version`` is greater than ``version``, and return it."""
        while self.current().version <= version:
            await self._changed.wait()
        return self.current()

    def _publish(self) -> None:
        if self.current().resolved:
            self._first.set()
        self._changed.set()
        self._changed = trio.Event()


class EndpointView(View[EndpointSet]):
    pass


class ProfileView(View[ProfileState]):
    pass


@dataclass(frozen=True, slots=True)
class _Backoff:
    initial: float
    maximum: float

    def delay(self, attempt: int) -> float:
        ceiling: float = min(self.maximum, self.initial * 2.0 ** min(attempt, 30))
        return ceiling * (0.5 + random.random() / 2)  # noqa: S311 (jitter, not cryptography)


class DiscoveryClient:
    """``async with DiscoveryClient(settings) as d: view = await d.endpoints(authority)``."""

    def __init__(
        self,
        settings: DiscoverySettings,
        *,
        ssl_context_factory: Callable[[DiscoverySettings], ssl.SSLContext] | None = None,
    ) -> None:
        self.settings = settings
        self._ssl_context = (ssl_context_factory or _client_context)(settings)
        self._stack = AsyncExitStack()
        self._nursery: trio.Nursery | None = None
        self._views: dict[tuple[str, str], View[Any]] = {}
        self._scopes: dict[tuple[str, str], trio.CancelScope] = {}

    async def __aenter__(self) -> DiscoveryClient:
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def endpoints(self, authority: str) -> EndpointView:
        """The endpoints of ``authority`` (``host:port``), subscribing on first use.

        Returns once the first snapshot arrived or ``initial_timeout`` passed (then the view
        is not ``resolved`` yet and fills in as soon as the service answers).
        """
        view = await self._subscribe("endpoints", authority, EndpointView, EndpointTracker)
        assert isinstance(view, EndpointView)
        return view

    async def profile(self, authority: str) -> ProfileView:
        """The ServiceProfile of ``authority`` (the service's default when it has none)."""
        view = await self._subscribe("profiles", authority, ProfileView, ProfileTracker)
        assert isinstance(view, ProfileView)
        return view

    async def _subscribe(
        self,
        api: str,
        authority: str,
        view_type: type[View[Any]],
        tracker_type: Callable[[], _Tracker],
    ) -> View[Any]:
        if self._nursery is None:
            raise RuntimeError("use the DiscoveryClient with 'async with'")
        view = self._views.get((api, authority))
        if view is None:
            view = view_type(authority, tracker_type())
            self._views[(api, authority)] = view
            scope = self._scopes[(api, authority)] = trio.CancelScope()
            self._nursery.start_soon(
                self._follow_within, scope, api, view, name=f"discovery {api} {authority}"
            )
        with trio.move_on_after(self.settings.initial_timeout):
            await view._first.wait()
        return view

    def release(self, authority: str) -> None:
        """Stop following ``authority`` (both streams); its views stop changing.

        The proxy calls this when it has not used an authority for a while (Linkerd drops
        outbound discovery after 5 s idle), so streams do not pile up.
        """
        for api in ("endpoints", "profiles"):
            scope = self._scopes.pop((api, authority), None)
            if scope is not None:
                scope.cancel()
            self._views.pop((api, authority), None)

    @property
    def subscriptions(self) -> int:
        """How many streams are open or being reopened."""
        return len(self._scopes)

    async def _follow_within(self, scope: trio.CancelScope, api: str, view: View[Any]) -> None:
        with scope:
            await self._follow(api, view)

    async def _follow(self, api: str, view: View[Any]) -> None:
        """Keep one stream open for ``view`` forever (until the client closes)."""
        backoff = _Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        attempt = 0
        target = f"/v1/{api}?authority={quote(view.authority, safe=':[]')}"
        while True:
            error: str | None
            try:
                got_lines = await self._stream_once(target, view)
            except _Refused as refused:
                if 400 <= refused.status < 500:
                    log.warning("destination refused %s: %s", view.authority, refused)
                    if view._tracker.set_connection(connected=False, error=str(refused)):
                        view._publish()
                    view._first.set()  # final: nobody should wait for a snapshot
                    return
                error, got_lines = str(refused), False
            except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                error, got_lines = _describe(exc), False
            except (h11.ProtocolError, ServerProtocolError) as exc:
                error, got_lines = f"protocol error: {exc}", False
            else:
                error = None
            if got_lines:
                attempt = 0
            if view._tracker.set_connection(connected=False, error=error):
                view._publish()
            delay = backoff.delay(attempt)
            attempt += 1
            log.info(
                "destination stream for %s ended (%s); retrying in %.2fs",
                view.authority,
                error or "closed by the server",
                delay,
            )
            await trio.sleep(delay)

    async def _connect(self) -> trio.SSLStream[trio.SocketStream]:
        settings = self.settings
        with trio.fail_after(settings.connect_timeout):
            tcp = await trio.open_tcp_stream(settings.host, settings.port)
            stream = trio.SSLStream(
                tcp, self._ssl_context, server_hostname=settings.server_name, https_compatible=True
            )
            try:
                await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
        return stream

    async def _stream_once(self, target: str, view: View[Any]) -> bool:
        """One request; returns whether any line arrived (resets the backoff)."""
        settings = self.settings
        stream = await self._connect()
        got_lines = False
        async with stream:
            connection = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET",
                target=target,
                headers=[
                    ("Host", settings.server_name),
                    ("Accept", "application/x-ndjson"),
                    ("User-Agent", "meshlet-proxy"),
                ],
            )
            await stream.send_all(connection.send(request) + connection.send(h11.EndOfMessage()))
            splitter = LineSplitter(settings.max_line_bytes)
            error_body = b""
            status = 0
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    with trio.fail_after(settings.idle_timeout):
                        data = await stream.receive_some(65536)
                    connection.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    if status == 200:
                        connected = view._tracker.set_connection(connected=True)
                        if connected and view.current().resolved:
                            view._publish()
                elif isinstance(event, h11.Data):
                    if status != 200:
                        error_body = (error_body + bytes(event.data))[:_MAX_ERROR_BODY]
                        continue
                    for line in splitter.feed(bytes(event.data)):
                        got_lines = True
                        if view._tracker.apply(parse_line(line)):
                            view._publish()
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    if status != 200:
                        raise _Refused(status, _reason(error_body))
                    return got_lines


def _describe(error: BaseException) -> str:
    """``BrokenResourceError`` wraps the real cause (a certificate error...): name that too."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(parts) < 3:
        text = str(current)
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__
    return " <- ".join(parts)


def _reason(body: bytes) -> str:
    try:
        parsed = json.loads(body)
        return f"{parsed['error']}: {parsed['message']}"
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200] or "no reason given"


def _client_context(settings: DiscoverySettings) -> ssl.SSLContext:
    # Only the mesh's trust anchors: passing cadata keeps the system's CAs out.
    context = ssl.create_default_context(cadata=settings.trust_anchors_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
