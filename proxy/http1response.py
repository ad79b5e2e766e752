"""The response half of an HTTP/1 exchange: 1xx, the head, the body, towards the client.

``ResponseRelay`` is the part of the client session (``proxy/http1.py``) that relays what the
upstream answers: informational heads (``100 Continue``; a ``101`` that starts a tunnel), the
final head rewritten for the client (hop-by-hop fields removed, framing chosen for the client's
HTTP version, ``Connection: close`` when the connection ends after it), and the body with its
framing re-created, written together with the head when it is already there. The plain path and
the mesh path (``proxy/http1mesh.py``) both call ``relay_response``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from proxy.errors import ClientClosed, UpstreamClosed, UpstreamError, UpstreamProtocolError
from proxy.h1 import (
    CHUNKED,
    CLOSED,
    End,
    Event,
    ParseError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    Truncated,
)
from proxy.h1.write import (
    CHUNKED_FIELD,
    CLOSE_FIELD,
    UPGRADE_FIELD,
    chunk,
    last_chunk,
    response_framing,
    response_head,
)
from proxy.http1tap import ExchangeTap
from proxy.net import RECEIVE_SIZE, Conn

if TYPE_CHECKING:
    from proxy.context import ProxyContext, Route

__all__ = ["ResponseRelay", "upstream_event", "wire_event"]

log = logging.getLogger(__name__)

SWITCHING_PROTOCOLS: Final = 101


def wire_event(wire: ResponseReader) -> Event | None:
    """The upstream's next buffered event; its errors as ``UpstreamError``."""
    try:
        return wire.next_event()
    except Truncated as exc:
        raise UpstreamClosed(f"upstream closed the connection early: {exc}") from None
    except ParseError as exc:
        raise UpstreamProtocolError(f"upstream sent invalid HTTP/1: {exc}") from None


async def upstream_event(upstream: Conn, wire: ResponseReader) -> Event:
    """The upstream's next event, reading as needed."""
    while True:
        event = wire_event(wire)
        if event is None:
            if wire.switched:
                raise UpstreamProtocolError("upstream switched protocols unasked")
            wire.feed(await upstream.receive_answer())
            continue
        if event is CLOSED:
            raise UpstreamClosed("upstream closed the connection before the response was complete")
        return event


class ResponseRelay:
    """The response side of ``proxy.http1._Session`` (whose state it shares)."""

    client: Conn
    route: Route
    context: ProxyContext
    reader: RequestReader
    tap: ExchangeTap
    responded: bool
    reusable: bool

    async def relay_response(
        self,
        upstream: Conn,
        wire: ResponseReader,
        request: RequestHead,
        labels: str,
        started: float,
        *,
        on_head: Callable[[int], None] | None = None,
    ) -> tuple[int, bool]:
        """Relay 1xx, the response head and body; returns (status, switched to a tunnel).

        ``on_head(status)`` sees the final response head before anything of it is relayed (the
        mesh path reports the attempt there, and raises to discard it for a retry)."""
        response = await self._response_head(upstream, wire, request, labels, started)
        if response is None:
            return SWITCHING_PROTOCOLS, True
        status = response.status
        if on_head is not None:
            on_head(status)
        self.context.metrics.response_headers(
            labels, status, (trio.current_time() - started) * 1000
        )
        tapped = self.tap.current
        if tapped is not None:
            tapped.response_start(status)
        chunked, out = self.client_head(request, response)
        self.responded = True
        try:
            await self._relay_body(upstream, wire, out, chunked=chunked)
        except UpstreamError as exc:
            # The head is out: the only honest signal left is to reset the client connection.
            log.info("%s response body from %s failed: %s", self.route.direction, labels, exc)
            self.context.metrics.response_end(labels, status, "failure")
            self.tap.end(error="reset")
            self.client.abort()
            raise ClientClosed("response aborted") from exc
        return status, False

    async def _relay_body(
        self, upstream: Conn, wire: ResponseReader, out: bytes, *, chunked: bool
    ) -> None:
        """The response body after its head (``out``), until its end."""
        tapped = self.tap.current
        while True:
            event = wire_event(wire)
            if event is None:
                if out:  # the head and whatever body was buffered leave in one write
                    await self.client.send(out)
                    out = b""
                wire.feed(await upstream.receive())
            elif type(event) is bytes:
                if tapped is not None:
                    tapped.response_bytes += len(event)
                out += chunk(event) if chunked else event
                if len(out) >= RECEIVE_SIZE:
                    await self.client.send(out)
                    out = b""
            elif type(event) is End:
                if chunked:
                    out += last_chunk(event.trailers)
                if out:
                    await self.client.send(out)
                return
            else:
                raise UpstreamProtocolError("upstream sent a second response unasked")

    def client_head(self, request: RequestHead, response: ResponseHead) -> tuple[bool, bytes]:
        """The response head for the client, and whether its body goes out chunked."""
        framing = response_framing(response.framing, client_http11=request.version == b"1.1")
        headers = response.fields.forwarded
        if framing == CHUNKED:
            headers.append(CHUNKED_FIELD)
        elif framing != response.framing:  # raw until the connection closes (HTTP/1.0 client)
            self.reusable = False
        if (
            not request.keep_alive
            or self.reader.switched  # a refused upgrade: the client's next bytes are not HTTP
            or self.context.lifecycle.draining.is_set()
        ):
            self.reusable = False
        if not self.reusable:
            headers.append(CLOSE_FIELD)
        return framing == CHUNKED, response_head(response.status, response.reason, headers)

    async def _response_head(
        self,
        upstream: Conn,
        wire: ResponseReader,
        request: RequestHead,
        labels: str,
        started: float,
    ) -> ResponseHead | None:
        """The final response head, relaying 1xx; ``None`` after relaying a ``101`` (tunnel)."""
        while True:
            event = await upstream_event(upstream, wire)
            if type(event) is not ResponseHead:
                raise UpstreamProtocolError("upstream sent body bytes without a response head")
            if event.status >= 200:
                return event
            end = await upstream_event(upstream, wire)  # a 1xx head is a whole message
            assert type(end) is End
            headers = event.fields.forwarded
            if event.status == SWITCHING_PROTOCOLS:
                upgrade = request.fields.upgrade
                if upgrade is None or not wire.switched:
                    raise UpstreamProtocolError("upstream switched protocols unasked")
                latency_ms = (trio.current_time() - started) * 1000
                self.context.metrics.response_headers(labels, SWITCHING_PROTOCOLS, latency_ms)
                if self.tap.current is not None:
                    self.tap.current.response_start(SWITCHING_PROTOCOLS)
                headers += [UPGRADE_FIELD, (b"upgrade", event.fields.upgrade or upgrade)]
                self.responded = True
                await self.client.send(response_head(event.status, event.reason, headers))
                return None
            if request.version == b"1.1":  # HTTP/1.0 clients do not expect 1xx answers
                await self.client.send(response_head(event.status, event.reason, headers))
