"""HTTP/1 requests as HTTP/2 streams between meshed proxies, and their answers back (sans-IO).

The client proxy's half of the contract in docs/mesh-outbound.md ("HTTP/1 over HTTP/2 between
proxies"): whether a request may be upgraded (``request_refusal``) to an endpoint
(``endpoint_refusal``), each answering ``None`` or the slug saying why not; the HTTP/2 request
fields for an HTTP/1 request head (``h2_request_headers``); and the HTTP/1 response head for an
HTTP/2 response's fields (``h1_response_head``), as a ``ResponseHead`` whose framing the HTTP/1
shell (``proxy/http1response.py``) turns into the client's framing as for any response.

Nothing here parses HTTP/1 or encodes HTTP/2: the heads come from ``proxy/h1`` (llhttp already
validated them, ``proxy/h1/fields.py`` already removed their hop-by-hop fields), the fields go
to ``proxy/h2peer.py``.
"""

from __future__ import annotations

import re
from typing import Final

from proxy.discovery import Endpoint
from proxy.h1 import LENGTH, NO_BODY, UNTIL_CLOSE, RequestHead, ResponseHead
from proxy.h1.fields import FieldError, read_fields
from proxy.mtls.transport import CONNECTION_FIELDS, ORIG_PROTO_HEADER

__all__ = [
    "CONNECT_METHOD",
    "ENDPOINT_NOT_MESHED",
    "EXPECT_CONTINUE",
    "H2_HINT",
    "NO_H2_HINT",
    "NO_LOCAL_IDENTITY",
    "PROTOCOL_UPGRADE",
    "REFUSALS",
    "SETTING_OFF",
    "ResponseHeadError",
    "endpoint_refusal",
    "h1_response_head",
    "h2_request_headers",
    "request_refusal",
]

Header = tuple[bytes, bytes]

H2_HINT: Final = "h2"
"""Discovery's protocol hint for an endpoint whose proxy accepts HTTP/2 from meshed peers."""

SETTING_OFF: Final = "setting_off"
NO_LOCAL_IDENTITY: Final = "no_local_identity"
ENDPOINT_NOT_MESHED: Final = "endpoint_not_meshed"
NO_H2_HINT: Final = "no_h2_hint"
PROTOCOL_UPGRADE: Final = "protocol_upgrade"
CONNECT_METHOD: Final = "connect_method"
EXPECT_CONTINUE: Final = "expect_continue"
REFUSALS: Final = {
    SETTING_OFF: "MESHLET_PROXY_OUTBOUND_HTTP1_UPGRADE is off",
    NO_LOCAL_IDENTITY: "this proxy has no identity (mTLS off)",
    ENDPOINT_NOT_MESHED: "discovery gave the endpoint no identity",
    NO_H2_HINT: "discovery does not say the endpoint's proxy speaks HTTP/2",
    PROTOCOL_UPGRADE: "the request asks for a protocol switch (Upgrade), tunnelled over HTTP/1",
    CONNECT_METHOD: "CONNECT opens a tunnel, kept on HTTP/1",
    EXPECT_CONTINUE: "Expect: 100-continue waits for an interim answer, kept on HTTP/1",
}
"""Why a request is not upgraded: slug -> sentence."""


_CONNECT: Final = b"CONNECT"
_OPTIONS: Final = b"OPTIONS"
_HOST: Final = b"host"
_CONTENT_LENGTH: Final = b"content-length"
_NOT_FORWARDED: Final = frozenset({_HOST, ORIG_PROTO_HEADER})  # the latter is ours to set
_SCHEME: Final = (b":scheme", b"http")
_SCHEMES: Final = (b"http", b"https")
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_FIELD_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # a token (RFC 9110 5.1)
_BAD_VALUE: Final = re.compile(rb"[\r\n\x00]")  # RFC 9113 8.2.1: the response is malformed


def endpoint_refusal(*, enabled: bool, local_identity: bool, endpoint: Endpoint) -> str | None:
    """``None`` when requests to ``endpoint`` may be upgraded, else the slug saying why not."""
    if not enabled:
        return SETTING_OFF
    if not local_identity:
        return NO_LOCAL_IDENTITY
    if endpoint.identity is None:
        return ENDPOINT_NOT_MESHED
    if endpoint.protocol_hint != H2_HINT:
        return NO_H2_HINT
    return None


def request_refusal(request: RequestHead) -> str | None:
    """``None`` when ``request`` may travel as an HTTP/2 stream, else the slug saying why not."""
    if request.method == _CONNECT:
        return CONNECT_METHOD
    if request.fields.upgrade is not None:
        return PROTOCOL_UPGRADE
    if request.fields.expect_continue:
        return EXPECT_CONTINUE
    return None


def _split_target(target: bytes) -> tuple[bytes | None, bytes]:
    """(the authority of an absolute-form target, else ``None``; the origin-form target)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in _SCHEMES:
        return None, target
    end = len(rest)
    for mark in (b"/", b"?"):
        found = rest.find(mark)
        if 0 <= found < end:
            end = found
    authority, path = rest[:end], rest[end:]
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority.rpartition(b"@")[2], path


def h2_request_headers(request: RequestHead, default_authority: bytes) -> list[Header]:
    """The HTTP/2 fields of ``request``: pseudo-headers, the forwarded fields in order (names
    lowercased, ``Host`` and hop-by-hop ones removed), then ``meshlet-orig-proto``.

    ``:authority`` is the ``Host`` value, else the authority of an absolute-form target, else
    ``default_authority`` (an HTTP/1.0 request without ``Host``: the destination's authority, as
    the HTTP/1 path sends it)."""
    target_authority, path = _split_target(request.target)
    if request.method == _OPTIONS and request.target == b"*":
        path = b"*"
    authority = request.fields.host or target_authority or default_authority
    headers: list[Header] = [
        (b":method", request.method),
        _SCHEME,
        (b":authority", authority),
        (b":path", path or b"/"),
    ]
    for name, value in request.fields.forwarded:
        lowered = name.lower()
        if lowered in _NOT_FORWARDED or lowered in CONNECTION_FIELDS:
            continue
        headers.append((lowered, value))
    headers.append((ORIG_PROTO_HEADER, b"HTTP/" + request.version))
    return headers


class ResponseHeadError(ValueError):
    """The peer's response fields cannot make an HTTP/1 response head; the message says why."""


def h1_response_head(headers: list[Header], *, head_request: bool) -> ResponseHead | None:
    """The HTTP/1 response head for an HTTP/2 response's fields; ``None`` for an interim (1xx)
    answer, which is dropped. Framing: none for ``HEAD``, 204 and 304; the ``content-length``
    when present; else ``UNTIL_CLOSE`` (the shell chunks it to an HTTP/1.1 client and closes
    after it for an HTTP/1.0 one). Raises ``ResponseHeadError``, also for a field that would
    corrupt the HTTP/1 head (a name that is no token; CR, LF or NUL in a value) and for two
    different content-lengths."""
    fields = [
        item
        for item in headers
        if not item[0].startswith(b":") and item[0] not in CONNECTION_FIELDS
    ]
    status = _status(headers)
    if status < 200:
        return None
    length: bytes | None = None
    for name, value in fields:
        if not _FIELD_NAME.match(name) or _BAD_VALUE.search(value):
            # It would split the head. The value stays out of the message (and so of logs): it
            # may be a credential (set-cookie).
            raise ResponseHeadError(f"invalid field {name[:64].decode('latin-1')!r}")
        if name.lower() == _CONTENT_LENGTH:
            if not value.strip().isdigit() or length not in (None, value.strip()):
                raise ResponseHeadError(f"invalid content-length {value!r}")
            length = value.strip()
    try:
        parsed = read_fields(fields)
    except (FieldError, ValueError) as exc:
        raise ResponseHeadError(str(exc)) from None
    if head_request or status in _NO_BODY_STATUSES:
        framing = NO_BODY
    elif parsed.content_length is not None:
        framing = LENGTH
    else:
        framing = UNTIL_CLOSE
    return ResponseHead(status, b"", parsed, framing, keep_alive=True)


def _status(headers: list[Header]) -> int:
    """The final or interim status of a response's fields. Raises ``ResponseHeadError``."""
    text = next((value for name, value in headers if name == b":status"), None)
    if text is None or len(text) != 3 or not text.isdigit() or text < b"100":
        raise ResponseHeadError(f"the response has no valid :status ({text!r})")
    status = int(text)
    if status == 101:
        raise ResponseHeadError("the peer switched protocols on an HTTP/2 stream")
    return status
