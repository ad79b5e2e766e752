"""Bytes in, HTTP/1 events out: llhttp (``httptools``) with the proxy's own checks around it.

Theory of operation. A reader owns one llhttp parser for one direction of one connection.
``feed(data)`` runs the parser over the bytes (``b""``: end of stream) and queues events
(``proxy/h1/events.py``); ``next_event()`` pops one, or returns ``None`` when more bytes are
needed. The parser consumes everything it is fed, possibly several pipelined messages, so the
queue holds at most one read's worth; the shell reads again only when the queue is empty, which
keeps memory bounded and gives TCP backpressure. An error found after complete messages is queued
behind them: those messages are served, then ``next_event`` raises it.

llhttp runs in strict mode and already refuses the request-smuggling shapes: both
``Content-Length`` and ``Transfer-Encoding``, two ``Content-Length`` fields, a bad or overflowing
chunk size, obs-fold, bare LF, control characters, whitespace before a field's colon, an unknown
method. Around it the readers add what llhttp leaves to its user: a limit on a head's size
(``HEAD_LIMIT``; 431) and on bytes that complete nothing (a field, chunk size or trailer
dripped without end: ``_QUIET_LIMIT``), HTTP versions other than 1.0/1.1 (505), ``CONNECT``
(405, not supported), ``Host`` (``proxy/h1/fields.py``), transfer codings other than
``chunked``, responses to ``HEAD`` (llhttp cannot be told that a
response has no body, so the reader ends the message at the head and starts a fresh parser for
the next exchange), and bodies delimited by the end of the stream (httptools cannot signal it).

Upgrades: after an upgrade request's head (WebSocket), llhttp stops; the bytes after the head are
kept in ``rest`` for the tunnel, and the reader takes nothing more. An upgrade request that also
carries a body (curl's ``Upgrade: h2c`` on a POST) is forwarded as a plain request instead (a
server may ignore ``Upgrade``): a fresh parser frames its body, primed with a synthetic head.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import httptools

from proxy.h1.events import (
    CHUNKED,
    CLOSED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    End,
    Event,
    ParseError,
    RequestHead,
    ResponseHead,
    Truncated,
)
from proxy.h1.fields import FieldError, read_fields, trailer_fields

__all__ = ["HEAD_LIMIT", "RequestReader", "ResponseReader"]

HEAD_LIMIT: Final = 65536
"""Largest head (request line or status line plus fields) accepted, in bytes."""
_QUIET_LIMIT: Final = 2 * HEAD_LIMIT
"""Bytes fed in a row without completing any field, body piece or message: a head field, chunk
size or extension, or trailer dripped without end. The memory guard behind ``HEAD_LIMIT``."""
_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}
_NO_TRAILERS: Final = End([])


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: ParseError) -> None:
        self.error = error


class _Reader:
    """What both directions share: the queue, head-size accounting, body and end events."""

    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def __init__(self) -> None:
        self._events: deque[Event | _Failed] = deque()
        self._headers: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._quiet = 0
        self._progress = False
        self._in_head = False
        self._in_message = False
        self._framing = NO_BODY
        self._failed = False
        self.switched = False
        """An upgrade went through: the rest of the stream is not HTTP (see ``rest``)."""
        self.rest = b""
        """Bytes after the head that switched protocols, for the tunnel."""

    def next_event(self) -> Event | None:
        """The next event, ``None`` if more bytes are needed; raises ``ParseError``."""
        if not self._events:
            return None
        event = self._events.popleft()
        if type(event) is _Failed:
            raise event.error
        return event  # type: ignore[return-value]

    def feed(self, data: bytes) -> None:
        """Parse ``data``; ``b""`` is the end of the stream."""
        if self._failed or self.switched:
            return
        if not data:
            self._end_of_stream()
            return
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data, int(upgrade.args[0]))
        except httptools.HttpParserCallbackError as exc:
            context = exc.__context__
            self._fail(context if isinstance(context, ParseError) else ParseError(str(exc)))
            return
        except httptools.HttpParserError as exc:
            self._fail(ParseError(str(exc) or type(exc).__name__))
            return
        if self._progress:
            self._quiet = 0
            return
        self._quiet += len(data)
        if self._quiet > _QUIET_LIMIT:
            what = "head" if self._in_head else "chunk framing or trailer"
            self._fail(ParseError(f"{what} larger than {HEAD_LIMIT} bytes", 431))

    def _fail(self, error: ParseError) -> None:
        self._failed = True
        self._events.append(_Failed(error))

    def _end_of_stream(self) -> None:
        if self._in_message and self._framing == UNTIL_CLOSE and not self._in_head:
            self._in_message = False
            self._events.append(_NO_TRAILERS)
            self._events.append(CLOSED)
        elif self._in_message:
            what = "head" if self._in_head else "body"
            self._fail(Truncated(f"the connection closed in the middle of a message {what}"))
        else:
            self._events.append(CLOSED)
        self._failed = True  # nothing more can come

    def _upgraded(self, data: bytes, offset: int) -> None:
        self.switched = True
        self.rest = data[offset:]

    # -- llhttp callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = self._in_message = self._progress = True
        self._size = 0
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        self._size += len(name) + len(value) + 4
        if self._size > HEAD_LIMIT:
            what = "head" if self._in_head else "trailer section"
            raise ParseError(f"{what} larger than {HEAD_LIMIT} bytes", 431)
        self._headers.append((name, value))  # after the head: trailers

    def on_body(self, body: bytes) -> None:
        self._progress = True
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._progress = True
        if not self._in_message:
            return
        self._in_message = False
        headers = self._headers
        self._events.append(End(trailer_fields(headers)) if headers else _NO_TRAILERS)

    def _head_done(self) -> None:
        self._in_head = False
        self._progress = True
        self._size = 0
        self._headers = []  # from here on: trailers


class RequestReader(_Reader):
    """The client side: requests (``RequestHead``, body, ``End``), pipelined ones included."""

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpRequestParser(self)
        self._target = b""
        self._synthetic = False
        self._reframe: bytes | None = None

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._size += len(url)
        if self._size > HEAD_LIMIT:
            raise ParseError(f"request line longer than {HEAD_LIMIT} bytes", 431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._target = b""

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert isinstance(parser, httptools.HttpRequestParser)
        if self._synthetic:  # the stand-in head of a body being re-framed
            self._synthetic = False
            self._head_done()
            return
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise ParseError(f"unsupported HTTP version {parser.get_http_version()}", 505)
        method = parser.get_method()
        if method == b"CONNECT":
            raise ParseError("the CONNECT method is not supported", 405)
        try:
            fields = read_fields(self._headers)
        except FieldError as exc:
            raise ParseError(str(exc)) from None
        if fields.host is None and version == b"1.1":
            raise ParseError("missing Host field")
        if fields.chunked:
            if version == b"1.0":
                raise ParseError("Transfer-Encoding in an HTTP/1.0 request")
            framing = CHUNKED
        elif fields.content_length:
            framing = LENGTH
        else:
            framing = NO_BODY
        self._framing = framing
        length = fields.content_length or 0
        if fields.upgrade is not None and framing != NO_BODY:
            fields.upgrade = None  # forwarded as a plain request: see the module docstring
            self._reframe = (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                if framing == CHUNKED
                else b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % length
            )
        self._events.append(RequestHead(method, self._target, version, fields, framing))
        self._head_done()

    def on_message_complete(self) -> None:
        if self._reframe is None:  # else: the head of an upgrade that becomes a plain request
            super().on_message_complete()

    def _upgraded(self, data: bytes, offset: int) -> None:
        if self._reframe is None:
            super()._upgraded(data, offset)
            return
        synthetic, self._reframe = self._reframe, None
        self._in_message = False  # llhttp ended the upgrade message at its head
        self._parser = httptools.HttpRequestParser(self)
        self._synthetic = True
        self._parser.feed_data(synthetic)
        if offset < len(data):
            self.feed(data[offset:])


class ResponseReader(_Reader):
    """The upstream side: responses to the requests sent on one connection.

    ``start(head_request)`` before each exchange says whether the request was ``HEAD``.
    ``responses`` counts complete exchanges (more than none: the connection is being reused);
    ``received`` the bytes of the current one; ``idle_since`` is when the shell last put the
    connection aside idle (its clock). With them the shells decide whether an idle connection
    may be reused and whether a request may be sent again on a new one (``proxy/h1/replay.py``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._head_request = False
        self._discard = False
        self.responses = 0
        self.received = 0
        self.idle_since = 0.0
        self.keep_alive = False
        """Whether the last final response lets the connection carry another exchange."""

    def start(self, *, head_request: bool) -> None:
        if self._discard:
            self._parser = httptools.HttpResponseParser(self)
            self._discard = self._in_message = self._in_head = False
        self._head_request = head_request
        self.received = 0

    @property
    def idle(self) -> bool:
        """Nothing is queued and nothing failed: the connection can carry another exchange."""
        return not self._events and not self._failed

    def start_next_cycle(self) -> None:
        """The exchange completed; the connection may carry another (pools call this)."""
        self.responses += 1

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        super().feed(data)

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._size += len(reason)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert isinstance(parser, httptools.HttpResponseParser)
        if parser.get_http_version() not in _VERSIONS:
            raise ParseError(f"unsupported HTTP version {parser.get_http_version()}")
        status = parser.get_status_code()
        try:
            fields = read_fields(self._headers)
        except FieldError as exc:
            raise ParseError(str(exc)) from None
        if status < 200 or status in {204, 304} or self._head_request:
            framing = NO_BODY
        elif fields.chunked:
            framing = CHUNKED
        elif fields.content_length is not None:
            framing = LENGTH
        else:
            framing = UNTIL_CLOSE
        self._framing = framing
        keep_alive = framing != UNTIL_CLOSE and parser.should_keep_alive()
        if status >= 200:
            self.keep_alive = keep_alive
        self._events.append(ResponseHead(status, self._reason, fields, framing, keep_alive))
        self._head_done()
        if self._head_request and status >= 200:
            # llhttp expects the body the fields announce; the exchange ends here instead.
            self._in_message = False
            self._discard = True
            self._events.append(_NO_TRAILERS)

    def on_body(self, body: bytes) -> None:
        if self._discard:  # bytes after a response to HEAD: the connection is not reusable
            raise ParseError("bytes after the response to a HEAD request")
        super().on_body(body)
