"""The proxy's error tree: every failure says whose fault it was and how a client hears of it.

Exceptions from sockets, h11 and h2 are translated into these at the I/O edge (``proxy/net.py``
and the protocol shells), so the rest of the proxy decides with ``isinstance`` and never inspects
an ``OSError``'s errno. ``slug`` is stable: it is the value of the ``meshlet-proxy-error`` response
header and a log field; ``status`` is the HTTP status a client receives when the failure happens
before any response byte was sent.

- ``ClientError``: the downstream peer's fault (malformed request, went away).
- ``UpstreamError``: the upstream's fault (refused, timed out, reset, spoke bad HTTP).
- ``ProxyConfigError``: ours (nowhere to send the connection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar, Final

__all__ = [
    "ClientClosed",
    "ClientError",
    "ClientProtocolError",
    "ERROR_HEADER",
    "NoOriginalDestination",
    "ProxyConfigError",
    "ProxyError",
    "UpstreamClosed",
    "UpstreamConnectRefused",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamUnreachable",
    "unwrap_groups",
]

ERROR_HEADER: Final = b"meshlet-proxy-error"


class ProxyError(Exception):
    """Base of the tree; ``str(error)`` is a one-line sentence for logs."""

    slug: ClassVar[str] = "proxy_error"
    status: ClassVar[int] = 502


class ClientError(ProxyError):
    """The downstream client broke the protocol or went away."""

    slug = "client_error"
    status = 400


class ClientProtocolError(ClientError):
    """The client sent bytes that are not valid HTTP; ``status_hint`` is the answer (400, 431)."""

    slug = "malformed_request"
    status = 400

    def __init__(self, message: str, *, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class UpstreamError(ProxyError):
    """The upstream (the application inbound, the destination outbound) failed."""

    slug = "upstream_error"
    status = 502


class UpstreamConnectRefused(UpstreamError):
    """Nothing listens at the upstream address (ECONNREFUSED)."""

    slug = "upstream_connect_refused"
    status = 502


class UpstreamUnreachable(UpstreamError):
    """No route to the upstream (ENETUNREACH, EHOSTUNREACH, ...)."""

    slug = "upstream_unreachable"
    status = 502


class UpstreamConnectTimeout(UpstreamError):
    """The upstream did not accept the connection within the connect timeout."""

    slug = "upstream_connect_timeout"
    status = 504


class UpstreamClosed(UpstreamError):
    """The upstream closed or reset the connection before the response was complete."""

    slug = "upstream_closed"
    status = 502


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with bytes that are not valid HTTP."""

    slug = "upstream_protocol_error"
    status = 502


class ProxyConfigError(ProxyError):
    """The proxy cannot decide where the connection goes."""

    slug = "proxy_config_error"
    status = 502


class NoOriginalDestination(ProxyConfigError):
    """SO_ORIGINAL_DST gave nothing usable (not redirected, or pointing back at the proxy)."""

    slug = "no_original_destination"


class ClientClosed(ClientError):
    """The client closed or reset its connection mid-exchange."""

    slug = "client_closed"
    status = 400


@contextlib.contextmanager
def unwrap_groups() -> Iterator[None]:
    """Let a nursery's ``ExceptionGroup`` of proxy errors surface as its first error.

    Trio wraps whatever escapes a nursery in a group; callers want to ``except UpstreamError``.
    A group with anything else inside (a bug, a cancellation) propagates unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if leaves and all(isinstance(leaf, ProxyError) for leaf in leaves):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            yield from _leaves(inner)
        else:
            yield inner
