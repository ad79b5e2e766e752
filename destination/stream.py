"""A stream's HTTP side: the NDJSON response, and writing straight to its connection.

Theory of operation: a stream is one of the hub's async generators of lines (see ``hub.py``),
sent as one chunked HTTP/1.1 response. While the generator waits for a change, the hub may write
the change itself, straight to the connection's transport through a ``DirectWriter``, with bytes
encoded and chunk-framed once for every stream on the same target: no task switch, no ASGI
message, no copy per stream. Only a connection whose writes are not paused by flow control is
written to this way; a stream that is behind is left to its own task, which sends through ASGI
(awaiting the flow control) and so folds whatever it missed into one diff.

uvicorn does not put a request's transport in the ASGI scope, so ``DirectWriter.of`` finds it on
uvicorn's httptools request cycle: the bound ``send`` the server handed the app, which ``App``
keeps in the scope. Any other server, or a uvicorn that changed these attributes, gets no writer
and every change goes through ASGI: the same bytes, one task wake per stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Final, Protocol

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["RAW_SEND", "App", "DirectWriter", "LineStream", "Sink", "chunk"]

RAW_SEND: Final = "meshlet.destination.raw_send"
_UVICORN_HTTPTOOLS: Final = "uvicorn.protocols.http.httptools_impl"


def chunk(payload: bytes) -> bytes:
    """``payload`` as one HTTP/1.1 chunk (what uvicorn writes for a body message)."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


class Sink(Protocol):
    """Where the hub writes a stream's changes itself (HTTP/1.1 chunks, see ``chunk``)."""

    def ready(self) -> bool:
        """True when a write now would not queue behind a paused or closing connection."""
        ...

    def write(self, data: bytes) -> None: ...


class DirectWriter:
    """Writes chunks to the transport under a uvicorn httptools response already started."""

    __slots__ = ("_cycle", "_flow", "_is_closing", "write")

    def __init__(self, cycle: Any, transport: Any, flow: Any) -> None:
        self._cycle = cycle
        self._flow = flow
        self._is_closing = transport.is_closing
        self.write: Callable[[bytes], None] = transport.write  # no Python frame per write

    @classmethod
    def of(cls, send: Any) -> DirectWriter | None:
        """The writer under ``send`` (the server's own), or None if it cannot be found safely."""
        cycle = getattr(send, "__self__", None)
        if type(cycle).__module__ != _UVICORN_HTTPTOOLS:
            return None
        transport = getattr(cycle, "transport", None)
        flow = getattr(cycle, "flow", None)
        if not (callable(getattr(transport, "write", None)) and hasattr(transport, "is_closing")):
            return None
        if not isinstance(getattr(flow, "write_paused", None), bool):
            return None
        if not isinstance(getattr(cycle, "disconnected", None), bool):
            return None
        # Our chunks only fit a started, chunked, unfinished response.
        started = getattr(cycle, "response_started", None) is True
        chunked = getattr(cycle, "chunked_encoding", None) is True
        if not started or not chunked or getattr(cycle, "response_complete", True):
            return None
        return cls(cycle, transport, flow)

    def ready(self) -> bool:
        return not (self._flow.write_paused or self._cycle.disconnected or self._is_closing())


class LineStream(Response):
    """The response of a stream: ``open_lines(sink)`` is the hub's generator for it."""

    media_type = "application/x-ndjson"

    def __init__(
        self,
        open_lines: Callable[[Sink | None], AsyncGenerator[bytes, None]],
        headers: Mapping[str, str],
    ) -> None:
        self.open_lines = open_lines
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        raw = scope.get(RAW_SEND)
        lines = self.open_lines(DirectWriter.of(raw) if raw is not None else None)
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def until_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.create_task(until_disconnect())
        try:
            async for line in lines:
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # the client left: the stream simply ends
        finally:
            watcher.cancel()
            await lines.aclose()


class App(FastAPI):
    """FastAPI that keeps the server's own ``send`` in the scope, for ``DirectWriter.of``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, RAW_SEND: send}
        await super().__call__(scope, receive, send)
