"""The inbound policy's Trio shell: decide once per connection, refuse in the client's protocol.

``Authorizer.check`` runs in ``proxy/server.py`` for every inbound connection once its TLS state
and protocol are known (after any mTLS handshake and protocol detection), before anything is
forwarded. A refused connection never reaches the application:

- HTTP/1: the request is answered ``403`` with ``meshlet-proxy-error: unauthorized`` and
  ``connection: close``;
- HTTP/2: every request of the first batch is answered the same way, then GOAWAY
  (``proxy.h2fail``);
- anything else (opaque TCP, TLS passed through for the application, meshed opaque ports): the
  connection is closed.

Each refusal is logged at ``info`` with the client's address and the reason slug, and counted
(``proxy.policy.PolicyMetrics``). Skipped ports never reach the proxy (iptables), and the admin
and tap listeners are not inbound connections: the policy does not apply to them.
"""

from __future__ import annotations

import logging
from typing import Final

import h11
import trio

from proxy.detect import Protocol
from proxy.errors import ERROR_HEADER, ClientError, ProxyError
from proxy.h2fail import serve_h2_errors
from proxy.metrics import Metrics, classify
from proxy.net import Conn, format_address
from proxy.policy import InboundPolicy, PolicyMetrics, Verdict

__all__ = ["UNAUTHORIZED", "Authorizer", "Unauthorized"]

log = logging.getLogger(__name__)

UNAUTHORIZED: Final = "unauthorized"
_MAX_HEAD: Final = 65536  # bytes of request head read before answering 403
_DRAIN: Final = 65536  # request body bytes read (and dropped) so the 403 is not lost to a reset
_DRAIN_TIMEOUT: Final = 1.0  # seconds


class Unauthorized(ClientError):
    """The inbound policy refused the client (``meshlet-proxy-error: unauthorized``)."""

    slug = UNAUTHORIZED
    status = 403


class Authorizer:
    """The inbound listener's policy and its refusal counters (rendered with ``metrics``)."""

    def __init__(self, policy: InboundPolicy, metrics: Metrics, *, timeout: float) -> None:
        self.policy = policy
        self.counters = PolicyMetrics(policy.default)
        self._metrics = metrics
        self._timeout = timeout
        metrics.collect("inbound_policy", self.counters.render)

    async def check(
        self, client: Conn, protocol: Protocol, prefix: bytes, original: tuple[str, int]
    ) -> bool:
        """True when ``client`` may go on; otherwise the connection has been refused (the
        caller only closes it)."""
        if self.policy.allows_all:
            return True
        peer = _peer(client)
        verdict = self.policy.decide(client_id=client.peer_id, client_ip=peer[0])
        if verdict.allowed:
            return True
        log.info(
            "inbound connection from %s to port %d refused by policy %s (%s): %s",
            format_address(peer),
            original[1],
            self.policy.default.value,
            verdict.reason.value,
            verdict.text,
        )
        port = original[1]
        if protocol is Protocol.HTTP1:
            if not await self._refuse_http1(client, prefix, verdict, port):
                # No request head arrived (or not a valid one): nothing to answer, closed.
                self.counters.deny_tcp(port, verdict.reason, client.tls_labels)
        elif protocol is Protocol.HTTP2:
            error = Unauthorized(f"unauthorized: {verdict.text}")

            def count() -> None:
                self.counters.deny_http(port, verdict.reason, client.tls_labels)

            await serve_h2_errors(
                client, prefix, error, direction="inbound", metrics=self._metrics, on_request=count
            )
        else:
            self.counters.deny_tcp(port, verdict.reason, client.tls_labels)
        return False

    async def _refuse_http1(self, client: Conn, prefix: bytes, verdict: Verdict, port: int) -> bool:
        """Answer the first request 403; False when no request head arrived to answer."""
        server = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        server.receive_data(prefix)
        authority = b""
        with trio.move_on_after(self._timeout):
            while True:
                try:
                    event = server.next_event()
                except h11.RemoteProtocolError:
                    return False  # not HTTP after all
                if event is h11.NEED_DATA:
                    server.receive_data(await client.receive())
                    continue
                if not isinstance(event, h11.Request):
                    return False
                authority = next((v for n, v in event.headers if n == b"host"), b"")
                break
        if server.their_state is not h11.SEND_BODY and server.their_state is not h11.DONE:
            return False  # no request head within the timeout
        labels = self._metrics.http_labels("inbound", authority, tls=client.tls_labels)
        self._metrics.request(labels)
        self.counters.deny_http(port, verdict.reason, client.tls_labels)
        body = f"unauthorized: {verdict.text}\n".encode()
        head = h11.Response(
            status_code=Unauthorized.status,
            headers=[
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (ERROR_HEADER, UNAUTHORIZED.encode()),
                (b"connection", b"close"),
            ],
        )
        data = server.send(head) + server.send(h11.Data(data=body))
        await client.send(data + server.send(h11.EndOfMessage()))
        self._metrics.response_headers(labels, Unauthorized.status, 0.0)
        self._metrics.response_end(labels, Unauthorized.status, classify(Unauthorized.status, None))
        await _drain(client)
        return True


async def _drain(client: Conn) -> None:
    """Half-close, then read a little of what the client still sends: closing with unread bytes
    would reset the connection and could destroy the 403 before the client reads it."""
    left = _DRAIN
    with trio.move_on_after(_DRAIN_TIMEOUT):
        try:
            await client.send_eof()
            while left > 0 and (data := await client.receive()):
                left -= len(data)
        except ProxyError:
            pass  # the client is gone: nothing left to protect


def _peer(client: Conn) -> tuple[str, int]:
    try:
        address = client.stream.socket.getpeername()
    except OSError:
        return ("", 0)
    return (str(address[0]), int(address[1]))
