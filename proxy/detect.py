"""Protocol detection on the first bytes of a connection (sans-IO: bytes in, a verdict out).

Theory of operation: the shell reads from a freshly accepted connection and calls ``detect`` with
everything read so far. The answer is a ``Protocol`` once the prefix is conclusive, or ``None``
when more bytes are needed. Checks, in order (as Linkerd's ``linkerd/http/detect``):

- the HTTP/2 prior-knowledge preface ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`` → ``HTTP2``;
- a TLS record header carrying a ClientHello (``16 03 0x .. .. 01``) → ``TLS`` (forwarded as
  opaque bytes for now; mTLS between proxies comes with identity);
- an HTTP/1.x request line ``METHOD SP target SP HTTP/1.x CRLF`` → ``HTTP1``;
- anything else → ``OPAQUE``.

A prefix that could still become one of these keeps the verdict open until ``MAX_PREFIX`` bytes;
the shell also gives up after the detection timeout and forwards opaque bytes (server-speaks-first
protocols never send anything first).
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = ["HTTP2_PREFACE", "MAX_PREFIX", "Protocol", "detect"]

HTTP2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A request line longer than this is not worth waiting for: h11 would refuse it anyway.
MAX_PREFIX: Final = 8192

# RFC 9110 token characters for the method; the target is any visible ASCII.
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE: Final = re.compile(_TOKEN + rb" [\x21-\x7e]+ HTTP/1\.[01]\r?\n")
# What a request line looks like before it is complete (no CRLF yet).
_PARTIAL_REQUEST_LINE: Final = re.compile(
    rb"(?:"
    + _TOKEN
    + rb"(?: (?:[\x21-\x7e]+(?: (?:H(?:T(?:T(?:P(?:/(?:1(?:\.[01]?)?)?)?)?)?)?)?)?)?)?)?"
    rb"\r?\Z"
)
_TLS_CONTENT_HANDSHAKE: Final = 0x16
_TLS_CLIENT_HELLO: Final = 0x01


class Protocol(enum.Enum):
    """What the client speaks; the value is the metric/log label."""

    HTTP1 = "http/1"
    HTTP2 = "h2"
    TLS = "tls"
    OPAQUE = "opaque"


def detect(prefix: bytes) -> Protocol | None:
    """The protocol ``prefix`` starts, or ``None`` if more bytes could change the answer."""
    if not prefix:
        return None
    if prefix.startswith(HTTP2_PREFACE):
        return Protocol.HTTP2
    if HTTP2_PREFACE.startswith(prefix):
        return None  # "P", "PR", "PRI * ..." so far: could also be an HTTP/1 request "PRI ..."
    first = prefix[0]
    if first == _TLS_CONTENT_HANDSHAKE:
        return _detect_tls(prefix)
    return _detect_http1(prefix)


def _detect_tls(prefix: bytes) -> Protocol | None:
    # record: type(1) version(2) length(2); handshake: type(1) ...
    if len(prefix) < 6:
        return None if _tls_header_so_far(prefix) else Protocol.OPAQUE
    if _tls_header_so_far(prefix) and prefix[5] == _TLS_CLIENT_HELLO:
        return Protocol.TLS
    return Protocol.OPAQUE


def _tls_header_so_far(prefix: bytes) -> bool:
    # Record versions 3.0-3.4 (SSLv3 to TLS 1.3's legacy field).
    return len(prefix) < 2 or (prefix[1] == 0x03 and (len(prefix) < 3 or prefix[2] <= 0x04))


def _detect_http1(prefix: bytes) -> Protocol | None:
    end = prefix.find(b"\n")
    if end >= 0:
        if _REQUEST_LINE.match(prefix, 0, end + 1):
            return Protocol.HTTP1
        return Protocol.OPAQUE
    if len(prefix) >= MAX_PREFIX:
        return Protocol.OPAQUE
    if _PARTIAL_REQUEST_LINE.match(prefix):
        return None
    return Protocol.OPAQUE
