"""What a received HTTP/1.1 head says and which of its fields a proxy forwards (pure functions).

One pass over the header list (``(name, value)`` as received, names in their original case)
finds the fields that frame the message or describe the connection, and keeps the rest.

Hop-by-hop fields (RFC 9110 7.6.1) describe one connection, not the message: ``Connection`` and
every field it names, plus ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Transfer-Encoding``
and ``Upgrade``. They are never forwarded as received. The shell re-creates two on purpose:
``Transfer-Encoding: chunked`` when it re-chunks a body, and ``Connection: upgrade`` with
``Upgrade`` for a protocol switch (WebSocket), a negotiation between the two ends that the proxy
passes on and then tunnels. ``Content-Length`` is end-to-end and kept; the parser (llhttp)
already refused a message carrying it twice or together with ``Transfer-Encoding``.

The only transfer coding accepted is ``chunked`` alone (as h11 did): a proxy that dropped
``gzip, chunked`` down to ``chunked`` would change the body's meaning, so such a message is
refused with a reason (``FieldError``), like a request without ``Host`` or with two of them.
"""

from __future__ import annotations

from typing import Final

from proxy.mtls.labels import CLIENT_ID_HEADER

__all__ = ["FieldError", "Fields", "read_fields", "trailer_fields"]

Header = tuple[bytes, bytes]

_HOST: Final = b"host"
_CONTENT_LENGTH: Final = b"content-length"
_TRANSFER_ENCODING: Final = b"transfer-encoding"
_CONNECTION: Final = b"connection"
_UPGRADE: Final = b"upgrade"
_EXPECT: Final = b"expect"
_CLIENT_ID: Final = CLIENT_ID_HEADER
# draft-ietf-httpapi-idempotency-key-header (and the older X- name, as Go's Transport reads it):
# the client says repeating the request is safe whatever its method (RFC 9110 9.2.2).
_IDEMPOTENCY_KEYS: Final = frozenset({b"idempotency-key", b"x-idempotency-key"})
_DROPPED: Final = frozenset({b"keep-alive", b"proxy-connection", b"te"})
_SPECIAL: Final = frozenset(
    {_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _UPGRADE, _EXPECT, _CLIENT_ID}
    | _DROPPED
    | _IDEMPOTENCY_KEYS
)
# Connection tokens that name no field (or one already dropped): no second pass needed.
_PLAIN_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"te", b""})
# Never removed even when ``Connection`` names them: the message's framing and target.
_KEPT_ALWAYS: Final = frozenset({_CONTENT_LENGTH, _HOST})


class FieldError(Exception):
    """The head's fields are not acceptable; the message is the reason."""


class Fields:
    """The meaning of one head's fields (``read_fields``)."""

    __slots__ = (
        "chunked",
        "client_id",
        "close",
        "content_length",
        "expect_continue",
        "forwarded",
        "host",
        "idempotency_key",
        "upgrade",
    )

    def __init__(self) -> None:
        self.forwarded: list[Header] = []
        """The end-to-end fields, in order, names as received (hop-by-hop ones removed)."""
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.close = False
        """``Connection: close``: the sender will not reuse the connection."""
        self.upgrade: bytes | None = None
        """The ``Upgrade`` value when ``Connection`` names ``upgrade`` (e.g. ``websocket``)."""
        self.expect_continue = False
        self.client_id = False
        """A ``meshlet-client-id`` field is present (it is kept in ``forwarded``)."""
        self.idempotency_key = False
        """An ``Idempotency-Key`` (or ``X-Idempotency-Key``) field is present (kept): the
        client declares the request safe to repeat (``proxy/h1/replay.py``)."""


def read_fields(headers: list[Header]) -> Fields:  # noqa: PLR0912 (one branch per field, one pass)
    """Split ``headers`` into what they say and what is forwarded (see the module docstring)."""
    fields = Fields()
    kept = fields.forwarded
    tokens: list[bytes] | None = None
    upgrade: bytes | None = None
    for item in headers:
        name = item[0].lower()
        if name not in _SPECIAL:
            kept.append(item)
            continue
        value = item[1]
        if name == _HOST:
            if fields.host is not None:
                raise FieldError("more than one Host field")
            fields.host = value.strip()
            kept.append(item)
        elif name == _CONTENT_LENGTH:
            fields.content_length = int(value)  # llhttp checked the digits and duplicates
            kept.append(item)
        elif name == _TRANSFER_ENCODING:
            if value.strip().lower() != b"chunked":
                raise FieldError(f"unsupported Transfer-Encoding {value.decode('latin-1')!r}")
            fields.chunked = True
        elif name == _CONNECTION:
            tokens = (tokens or []) + [t.strip().lower() for t in value.split(b",")]
        elif name == _UPGRADE:
            upgrade = value
        elif name == _EXPECT:
            fields.expect_continue = value.strip().lower() == b"100-continue"
            kept.append(item)
        elif name == _CLIENT_ID:
            fields.client_id = True
            kept.append(item)
        elif name in _IDEMPOTENCY_KEYS:
            fields.idempotency_key = True
            kept.append(item)
        # else: Keep-Alive, Proxy-Connection, TE are dropped
    if tokens is not None:
        fields.close = b"close" in tokens
        if upgrade is not None and b"upgrade" in tokens:
            fields.upgrade = upgrade
        named = set(tokens) - _PLAIN_TOKENS - _KEPT_ALWAYS
        if named:  # rare: fields the sender declared hop-by-hop themselves
            kept[:] = [item for item in kept if item[0].lower() not in named]
    return fields


_NOT_TRAILERS: Final = _SPECIAL - {_EXPECT, _CLIENT_ID} - _IDEMPOTENCY_KEYS


def trailer_fields(trailers: list[Header]) -> list[Header]:
    """The trailer fields to forward: framing, routing and hop-by-hop fields removed."""
    return [item for item in trailers if item[0].lower() not in _NOT_TRAILERS]
