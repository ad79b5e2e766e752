"""HTTP/2 request streams to HTTP/1 requests, HTTP/1 responses to HTTP/2 heads (sans-IO), for the
inbound gateway of ``Session.HTTP1_OVER_H2`` connections (``proxy/h1gateway.py``).

Theory of operation. The peer's proxy turned an application's HTTP/1 request into an HTTP/2
stream (docs/mtls.md, "HTTP/1 over HTTP/2"); this module turns it back, exactly as the contract
says, and nothing here does I/O:

- ``stream_request(headers, end_stream, client_id)`` validates the stream's header block (the
  pseudo-fields, ``meshlet-orig-proto``, every name and value, ``content-length``) and returns a
  ``StreamRequest``: the HTTP/1 request head's bytes (``<method> <path> HTTP/1.x``, ``Host`` first,
  the other fields as received minus ``meshlet-orig-proto`` and any hop-by-hop or spoofed
  ``meshlet-client-id`` field, ``cookie`` fields joined into one (RFC 9113 8.2.3), the proven
  client id, the body framing) and how its body is framed (``content-length`` when given;
  else chunked when the stream carries a body; else none). A
  block that cannot become a safe HTTP/1 head raises ``RejectedStream`` (400): HPACK carries any
  byte, so a value with CR or LF would otherwise split the head (request smuggling).
- ``body_bytes(request, data)`` / ``body_end(request)``: body pieces in the request's framing.
- ``response_headers(head)``: an HTTP/1 ``ResponseHead`` as an HTTP/2 header list (``:status``
  and the fields, lowercased, minus hop-by-hop ones; ``content-length`` kept).
- ``response_has_body``: whether DATA follows the head (the reader already knows: HEAD, 1xx,
  204, 304 have none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from proxy.h1 import CHUNKED, LENGTH, NO_BODY, ResponseHead
from proxy.h1.replay import IDEMPOTENT_METHODS
from proxy.h1.write import CHUNKED_FIELD, chunk, last_chunk, request_head
from proxy.mtls.labels import inbound_request_headers
from proxy.mtls.transport import CONNECTION_FIELDS, ORIG_PROTO_HEADER

__all__ = [
    "RejectedStream",
    "StreamRequest",
    "body_bytes",
    "body_end",
    "response_has_body",
    "response_headers",
    "stream_request",
]

Header = tuple[bytes, bytes]

_VERSIONS: Final = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")  # no CTL but HTAB (RFC 9110)
_TARGET: Final = re.compile(rb"[\x21-\x7e]+")  # a request target: visible ASCII, no spaces
_AUTHORITY: Final = re.compile(rb"[\x21-\x7e]*")
_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
_DROPPED: Final = CONNECTION_FIELDS | {b"host", ORIG_PROTO_HEADER}
_IDEMPOTENCY_KEYS: Final = frozenset({b"idempotency-key", b"x-idempotency-key"})
_COOKIE: Final = b"cookie"


class RejectedStream(Exception):
    """The stream cannot become an HTTP/1 request; the message is the reason (answered 400)."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    method: bytes
    path: bytes
    authority: bytes
    version: bytes
    """``1.1`` or ``1.0``: what ``meshlet-orig-proto`` said."""
    framing: int
    """``proxy.h1`` framing of the body towards the application: NO_BODY, LENGTH or CHUNKED."""
    content_length: int | None
    head: bytes
    """The request head for the application, ready to write."""
    idempotent: bool
    """Sending it twice is the same as once (RFC 9110 9.2.2, or an ``Idempotency-Key``)."""


@dataclass(slots=True)
class _Block:
    """What one pass over a header block found."""

    method: bytes | None = None
    path: bytes | None = None
    authority: bytes | None = None
    host: bytes | None = None
    version: bytes | None = None
    content_length: int | None = None
    connection: frozenset[bytes] = frozenset()
    idempotency_key: bool = False


def _read_block(headers: list[Header]) -> tuple[_Block, list[Header]]:  # noqa: PLR0912
    """The block's pseudo-fields and special fields, and the fields to forward (one pass, one
    branch per kind of field); raises ``RejectedStream``."""
    block = _Block()
    fields: list[Header] = []
    cookie: int | None = None  # where the (first) cookie field is in ``fields``
    for raw, value in headers:
        if raw[:1] == b":":
            if raw == b":method":
                block.method = value
            elif raw == b":path":
                block.path = value
            elif raw == b":authority":
                block.authority = value
            elif raw != b":scheme":
                raise RejectedStream(f"unexpected pseudo-header {raw.decode('latin-1')}")
            continue
        if not _TOKEN.fullmatch(raw) or not _FIELD_VALUE.fullmatch(value):
            raise RejectedStream(f"invalid field {raw[:64].decode('latin-1')!r}")
        name = raw.lower()
        if name == ORIG_PROTO_HEADER:
            block.version = _VERSIONS.get(value.strip())
            if block.version is None:
                raise RejectedStream(f"{ORIG_PROTO_HEADER.decode()} {value[:32]!r} is not served")
        elif name == b"content-length":
            digits = value.strip()
            if not _DIGITS.fullmatch(digits):
                raise RejectedStream("invalid content-length")
            if block.content_length is not None and int(digits) != block.content_length:
                raise RejectedStream("conflicting content-length fields")
            if block.content_length is None:
                block.content_length = int(digits)
                fields.append((name, digits))
        elif name == b"host":
            block.host = value
        elif name == b"connection":
            block.connection |= {t.strip().lower() for t in value.split(b",")}
        elif name == _COOKIE:  # RFC 9113 8.2.3: split cookie fields join as one for HTTP/1
            if cookie is None:
                cookie = len(fields)
                fields.append((name, value))
            else:
                fields[cookie] = (name, fields[cookie][1] + b"; " + value)
        elif name not in _DROPPED:
            block.idempotency_key |= name in _IDEMPOTENCY_KEYS
            fields.append((name, value))
    if block.connection:
        named = block.connection - {b"content-length"}
        fields = [(name, value) for name, value in fields if name not in named]
    return block, fields


def stream_request(headers: list[Header], end_stream: bool, client_id: str | None) -> StreamRequest:
    """The HTTP/1 request a stream's header block stands for; raises ``RejectedStream``."""
    block, fields = _read_block(headers)
    version, method, path = block.version, block.method, block.path
    if version is None:
        raise RejectedStream(f"the stream carries no {ORIG_PROTO_HEADER.decode()} field")
    if not method or not _TOKEN.fullmatch(method):
        raise RejectedStream("missing or invalid :method")
    if method == b"CONNECT":
        raise RejectedStream("CONNECT is not carried over HTTP/1 over HTTP/2")
    if not path or not _TARGET.fullmatch(path) or not _origin_form(method, path):
        raise RejectedStream("missing or invalid :path")
    authority = block.authority if block.authority is not None else block.host or b""
    if not _AUTHORITY.fullmatch(authority):
        raise RejectedStream("invalid :authority")
    fields = inbound_request_headers(fields, client_id)
    content_length = block.content_length
    if content_length and end_stream:
        raise RejectedStream("content-length announces a body the stream does not carry")
    if content_length is not None:
        framing = LENGTH if content_length or not end_stream else NO_BODY
    else:
        framing = NO_BODY if end_stream else CHUNKED
    if framing == CHUNKED:
        fields.append(CHUNKED_FIELD)
        version = b"1.1"  # an HTTP/1.0 request cannot carry chunks; only 1.1 frames this body
    if authority or version == b"1.1":
        fields.insert(0, (b"host", authority))
    head = request_head(method, path, fields, version=version)
    idempotent = method in IDEMPOTENT_METHODS or block.idempotency_key
    return StreamRequest(
        method, path, authority, version, framing, content_length, head, idempotent
    )


def _origin_form(method: bytes, path: bytes) -> bool:
    """An absolute path, or ``*`` for ``OPTIONS`` (RFC 9113 8.3.1): no absolute URI, whose
    authority the application would take over ``Host`` (RFC 9112 3.2.2)."""
    return path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")


def body_bytes(request: StreamRequest, data: bytes) -> bytes:
    """One DATA payload as bytes for the application."""
    if not data:
        return b""
    return chunk(data) if request.framing == CHUNKED else data


def body_end(request: StreamRequest) -> bytes:
    """What ends the body for the application (trailers are dropped, as the contract says)."""
    return last_chunk([]) if request.framing == CHUNKED else b""


def response_headers(head: ResponseHead) -> list[Header]:
    """The HTTP/2 header list of a final HTTP/1 response head."""
    out: list[Header] = [(b":status", b"%d" % head.status)]
    for name, value in head.fields.forwarded:
        lowered = name.lower()
        if lowered not in CONNECTION_FIELDS:
            out.append((lowered, value))
    return out


def response_has_body(head: ResponseHead) -> bool:
    return head.framing != NO_BODY
