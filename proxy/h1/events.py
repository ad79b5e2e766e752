"""The events of the HTTP/1 core: heads, body bytes (plain ``bytes``), ends, and failures.

A reader (``proxy/h1/parse.py``) turns received bytes into, per message: one head
(``RequestHead`` or ``ResponseHead``), zero or more ``bytes`` body pieces (the payload, framing
removed), and one ``End`` (with trailers, if a chunked message had any). ``CLOSED`` is the peer's
clean end of stream between messages. Malformed input raises ``ParseError``; an end of stream
inside a message raises ``Truncated``. Each carries the reason a person can read.
"""

from __future__ import annotations

from typing import Final

from proxy.h1.fields import Fields

__all__ = [
    "CHUNKED",
    "CLOSED",
    "LENGTH",
    "NO_BODY",
    "UNTIL_CLOSE",
    "End",
    "Event",
    "ParseError",
    "RequestHead",
    "ResponseHead",
    "Truncated",
]

NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3
"""How a body is delimited: none, ``Content-Length``, chunked, or by the end of the stream."""


class ParseError(Exception):
    """The peer sent bytes that are not acceptable HTTP/1; ``status`` is the answer (requests)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class Truncated(ParseError):
    """The stream ended inside a message."""


class RequestHead:
    __slots__ = ("fields", "framing", "keep_alive", "method", "target", "version")

    def __init__(
        self, method: bytes, target: bytes, version: bytes, fields: Fields, framing: int
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        """``b"1.1"`` or ``b"1.0"``."""
        self.fields = fields
        self.framing = framing
        self.keep_alive = version == b"1.1" and not fields.close
        """Whether the client may send another request on the connection (as h11: HTTP/1.0
        connections carry one request)."""

    @property
    def authority(self) -> bytes:
        return self.fields.host or b""


class ResponseHead:
    __slots__ = ("fields", "framing", "keep_alive", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, fields: Fields, framing: int, keep_alive: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        self.framing = framing
        self.keep_alive = keep_alive
        """Whether the connection can carry another exchange after this response."""


class End:
    __slots__ = ("trailers",)

    def __init__(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = trailers


class _Closed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSED"


CLOSED: Final = _Closed()

Event = RequestHead | ResponseHead | bytes | End | _Closed
