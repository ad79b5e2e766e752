"""Reusing idle upstream connections, and sending a request again when one was dead (pure).

Theory of operation. An HTTP/1.1 server may close a keep-alive connection whenever it is idle:
its keep-alive timeout fires (gunicorn 2 s; Node, uvicorn and Apache 5 s; nginx 75 s) or it
restarts. A request the proxy writes at that moment crosses the server's FIN in flight and meets
an end of stream or a reset without one byte of a response. The proxy cannot tell that apart
from a server that read the request, acted on it and then closed without answering (a crash
after a commit): TCP says the same in both cases. So, as hyper, Go's ``net/http``, nginx (since
1.9.13) and Envoy do, and as RFC 9110 9.2.2 requires of a proxy ("A proxy MUST NOT automatically
retry non-idempotent requests"), it defends in two steps:

1. **Avoid the race.** An idle connection is reused only while it has been idle for less than
   the pool idle timeout (``reuse_idle``, ``MESHLET_PROXY_HTTP1_POOL_IDLE_TIMEOUT``); set below
   the servers' keep-alive timeouts, a server never times out a connection the proxy is about
   to reuse (Linkerd2-proxy's HTTP/1 pool idle timeout, Envoy's ``idle_timeout``). A connection
   whose close already arrived is noticed before use (the shells poll it, or replay below).
2. **Replay only what is safe** (``replay_decision``): a request is sent once more, on a new
   connection, when the connection was reused (a fresh one has no idle close to race: its
   failure is the server's answer), not one byte of a response arrived (after that the exchange
   happened), the request is idempotent (RFC 9110: ``GET``, ``HEAD``, ``OPTIONS``, ``TRACE``,
   ``PUT``, ``DELETE``, or any method with an ``Idempotency-Key``: the client says repeating
   it is harmless), and the proxy still holds every byte it sent (``ReplayCopy``: a body up to
   a bound; a larger one streamed and is gone). A ``POST`` that meets a dead connection gets the
   502: the proxy cannot know it was not processed.

Every "no" has a reason slug (``NOT_REPLAYED``) for the log line.
"""

from __future__ import annotations

from typing import Final

from proxy.h1.events import RequestHead

__all__ = [
    "BODY_NOT_KEPT",
    "FRESH_CONNECTION",
    "IDEMPOTENT_METHODS",
    "NOT_IDEMPOTENT",
    "NOT_REPLAYED",
    "REPLAY",
    "RESPONSE_STARTED",
    "ReplayCopy",
    "idempotent",
    "replay_decision",
    "reuse_idle",
]

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""RFC 9110 9.2.2: the methods whose intended effect is the same however often they are sent."""

REPLAY: Final = "replay"
FRESH_CONNECTION: Final = "fresh_connection"
RESPONSE_STARTED: Final = "response_started"
NOT_IDEMPOTENT: Final = "not_idempotent"
BODY_NOT_KEPT: Final = "body_not_kept"

NOT_REPLAYED: Final = {
    FRESH_CONNECTION: "the connection was new, so its failure is the server's answer",
    RESPONSE_STARTED: "part of a response had arrived",
    NOT_IDEMPOTENT: "the method is not idempotent and no Idempotency-Key was sent: the server "
    "may have processed it (RFC 9110 9.2.2)",
    BODY_NOT_KEPT: "the body was larger than the replay buffer and is no longer held",
}
"""Why a failed request was not sent again, by slug, in words for the log."""


def idempotent(head: RequestHead) -> bool:
    """Whether sending ``head``'s request twice has the effect of sending it once."""
    return head.method in IDEMPOTENT_METHODS or head.fields.idempotency_key


def replay_decision(*, reused: bool, response_bytes: int, idempotent: bool, kept: bool) -> str:
    """``REPLAY`` if a request whose upstream connection failed may be sent again on a new one,
    else the reason it may not (see the module docstring)."""
    if not reused:
        return FRESH_CONNECTION
    if response_bytes:
        return RESPONSE_STARTED
    if not idempotent:
        return NOT_IDEMPOTENT
    if not kept:
        return BODY_NOT_KEPT
    return REPLAY


def reuse_idle(idle_seconds: float, limit: float, *, meshed: bool = False) -> bool:
    """Whether a keep-alive connection idle for ``idle_seconds`` may take the next request: not
    once it has idled ``limit`` seconds (the server may be timing it out right then), unless it
    is ``meshed``: mTLS to the peer's proxy, which does not time out idle clients (and reusing
    it spares a TLS handshake)."""
    return meshed or idle_seconds < limit


class ReplayCopy:
    """The bytes of one request as written upstream (head, then framed body pieces), kept while
    the body stays within ``limit`` bytes. Past it the copy is dropped (``kept`` turns false) and
    memory stays bounded: a large upload streams and is simply not replayable."""

    __slots__ = ("_body_size", "_limit", "_parts")

    def __init__(self, head: bytes, limit: int) -> None:
        self._parts: list[bytes] | None = [head]
        self._body_size = 0
        self._limit = limit

    @property
    def kept(self) -> bool:
        return self._parts is not None

    def add(self, data: bytes) -> None:
        """Record body bytes before they are written upstream."""
        if self._parts is None:
            return
        self._body_size += len(data)
        if self._body_size > self._limit:
            self._parts = None
        else:
            self._parts.append(data)

    def take(self) -> bytes:
        """Everything kept, in order, as one write; the copy is released (one replay only)."""
        assert self._parts is not None, "nothing kept to replay"
        data = b"".join(self._parts)
        self._parts = None
        return data
