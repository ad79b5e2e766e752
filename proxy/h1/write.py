"""HTTP/1.1 bytes out: heads joined from fields the readers already validated, body framing.

Nothing here validates: every name and value comes from a head llhttp accepted (or is one of the
proxy's constants), so a head is one join. Bodies are passed through
(``Content-Length``, or raw until the connection closes) or chunked, whatever framing they
arrived with (the readers removed it); see ``response_framing``.
"""

from __future__ import annotations

from typing import Final

from proxy.h1.events import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, End, RequestHead

__all__ = [
    "CHUNKED_FIELD",
    "CLOSE_FIELD",
    "UPGRADE_FIELD",
    "chunk",
    "frame_body",
    "last_chunk",
    "request_head",
    "response_head",
    "response_framing",
    "write_request",
]

Header = tuple[bytes, bytes]

CHUNKED_FIELD: Final = (b"transfer-encoding", b"chunked")
CLOSE_FIELD: Final = (b"connection", b"close")
UPGRADE_FIELD: Final = (b"connection", b"upgrade")
_LAST_CHUNK: Final = b"0\r\n\r\n"
_REASONS: Final = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content",
    400: b"Bad Request", 405: b"Method Not Allowed", 431: b"Request Header Fields Too Large",
    502: b"Bad Gateway", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}  # fmt: skip


def request_head(
    method: bytes, target: bytes, headers: list[Header], *, version: bytes = b"1.1"
) -> bytes:
    lines = [method + b" " + target + b" HTTP/" + version]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"", b""]
    return b"\r\n".join(lines)


def response_head(status: int, reason: bytes, headers: list[Header]) -> bytes:
    if not reason:
        reason = _REASONS.get(status, b"")
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"", b""]
    return b"\r\n".join(lines)


def chunk(data: bytes) -> bytes:
    return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))


def last_chunk(trailers: list[Header]) -> bytes:
    if not trailers:
        return _LAST_CHUNK
    return b"".join(
        [b"0\r\n", *[name + b": " + value + b"\r\n" for name, value in trailers], b"\r\n"]
    )


def response_framing(framing: int, *, client_http11: bool) -> int:
    """How a response body framed as ``framing`` upstream goes to the client: as received when
    it has a length or no body; chunked to an HTTP/1.1 client otherwise (as h11 did, so a body
    the upstream delimits by closing keeps the client's connection alive); raw, delimited by
    closing the connection, to an HTTP/1.0 client (which cannot read chunks)."""
    if framing in (NO_BODY, LENGTH):
        return framing
    return CHUNKED if client_http11 else UNTIL_CLOSE


def write_request(head: RequestHead, headers: list[tuple[bytes, bytes]], host: bytes) -> bytes:
    """The request head for the upstream: ``headers`` (the forwarded fields) plus framing, the
    upgrade negotiation, and ``Host`` when the client (HTTP/1.0) sent none."""
    if head.framing == CHUNKED:
        headers.append(CHUNKED_FIELD)
    upgrade = head.fields.upgrade
    if upgrade is not None:
        headers.append(UPGRADE_FIELD)
        headers.append((b"upgrade", upgrade))
    if head.fields.host is None:
        headers.append((b"host", host))
    return request_head(head.method, head.target, headers)


def frame_body(head: RequestHead, event: bytes | End) -> bytes:
    """One request body event as bytes for the upstream, in the request's framing."""
    if type(event) is bytes:
        return chunk(event) if head.framing == CHUNKED else event
    assert isinstance(event, End)
    return last_chunk(event.trailers) if head.framing == CHUNKED else b""
