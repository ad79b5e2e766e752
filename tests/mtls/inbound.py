"""A small inbound "proxy" wired exactly as docs/mtls.md tells ``proxy/server.py`` to be.

Accept → ``proxy.detect`` → (TLS) ``read_client_hello`` → ``decide_inbound_tls`` → either
``accept_meshed`` (then the "application": an echo or an HTTP/1.1 endpoint that answers with the
headers it received after ``inbound_request_headers``) or pass the raw bytes through to a
recorder standing in for an application that terminates TLS itself. Every outcome is recorded
in ``Inbound.events`` for the tests to assert on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

from proxy.detect import Protocol, detect
from proxy.errors import ProxyError
from proxy.identity import IdentityClient
from proxy.mtls import (
    InboundTlsAction,
    MtlsSettings,
    PrefixedStream,
    accept_meshed,
    decide_inbound_tls,
    inbound_request_headers,
    read_client_hello,
)

__all__ = ["Inbound", "serve_inbound"]


@dataclass
class Inbound:
    identity: IdentityClient
    settings: MtlsSettings
    mode: str = "echo"
    """``echo`` the plaintext back, or ``http``: answer one HTTP/1.1 request with its headers."""
    events: list[dict[str, object]] = field(default_factory=list)
    port: int = 0

    async def handle(self, tcp: trio.SocketStream) -> None:
        event: dict[str, object] = {}
        self.events.append(event)
        try:
            prefix = b""
            protocol = None
            while protocol is None:
                data = await tcp.receive_some(65536)
                if not data:
                    event["outcome"] = "closed_early"
                    return
                prefix += data
                protocol = detect(prefix)
            if protocol is not Protocol.TLS:
                event["outcome"] = "plaintext"
                await self._application(PrefixedStream(prefix, tcp), None, event)
                return
            receive = _receiver(tcp)
            timeout = self.settings.handshake_timeout
            hello, prefix = await read_client_hello(receive, prefix, timeout=timeout)
            decision = decide_inbound_tls(hello, self.identity.settings.local_name)
            event["decision"] = decision.reason
            if decision.action is InboundTlsAction.PASSTHROUGH:
                event["outcome"] = "passthrough"
                event["passed_bytes"] = prefix
                return
            meshed = await accept_meshed(tcp, prefix, self.identity, settings=self.settings)
            event.update(outcome="meshed", client_id=meshed.client_id, alpn=meshed.alpn)
            await self._application(meshed.stream, meshed.client_id, event)
        except ProxyError as exc:
            event.update(outcome="refused", slug=exc.slug, error=str(exc))
        finally:
            await trio.aclose_forcefully(tcp)

    async def _application(
        self, stream: trio.abc.Stream, client_id: str | None, event: dict[str, object]
    ) -> None:
        if self.mode == "echo":
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                event["echo_broken"] = True
            return
        await _answer_with_headers(stream, client_id)
        with trio.move_on_after(1):
            await stream.aclose()  # TLS close_notify, so the client reads a clean end


def _receiver(tcp: trio.SocketStream) -> Callable[[], Awaitable[bytes]]:
    async def receive() -> bytes:
        return bytes(await tcp.receive_some(65536))

    return receive


async def _answer_with_headers(stream: trio.abc.Stream, client_id: str | None) -> None:
    """One HTTP/1.1 exchange: the response body is the JSON list of headers the app would see."""
    server = h11.Connection(h11.SERVER)
    while True:
        event = server.next_event()
        if event is h11.NEED_DATA:
            server.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(event, h11.Request):
            forwarded = inbound_request_headers(event.headers, client_id)
            body = json.dumps([[n.decode(), v.decode()] for n, v in forwarded]).encode()
            headers = [("content-length", str(len(body))), ("connection", "close")]
            data = server.send(h11.Response(status_code=200, headers=headers)) or b""
            data += server.send(h11.Data(data=body)) or b""
            data += server.send(h11.EndOfMessage()) or b""
            await stream.send_all(data)
            return


async def serve_inbound(
    inbound: Inbound, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    inbound.port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, inbound.handle, [listener])
        task_status.started(inbound.port)
