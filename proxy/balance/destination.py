"""The façade the proxy calls: a ``Destination`` per outbound authority, ``Attempts`` per request.

Theory of operation: a ``Destination`` owns the balancer, the route table and the retry policy of
one authority, and is fed discovery's snapshots as they change (``sync_endpoints`` with an
``EndpointSet``, ``sync_profile`` with a ``ProfileState``). For each request the shell calls
``begin(method, path, now)``, which matches the route, deposits into the retry budget and returns
an ``Attempts``; then, in a loop: ``attempts.pick(now)`` for the endpoint, send,
``attempts.finished(pick, now, status=..., grpc_status=...)`` (or ``outcome=`` for a connect
failure or a cancellation), which updates the balancer and answers ``Retry`` or ``GiveUp``.
Everything here is synchronous and pure state: the shell owns sockets, timers and the clock.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

from .balancer import Balancer, E, EndpointLike, Key, NoEndpoint, Pick, key_of
from .budget import RetryBudget
from .outcome import Outcome
from .retry import GiveUp, Retry, RetryPolicy
from .routes import ProfileError, Route, RouteTable, classify
from .settings import BalanceSettings

__all__ = ["Attempts", "Destination", "EndpointSetLike", "ProfileStateLike"]


E_co = TypeVar("E_co", bound=EndpointLike, covariant=True)


class EndpointSetLike(Protocol[E_co]):
    """What ``Destination`` reads of ``proxy.discovery.EndpointSet``."""

    @property
    def endpoints(self) -> Mapping[Key, E_co]: ...
    @property
    def version(self) -> int: ...


class ProfileStateLike(Protocol):
    """What ``Destination`` reads of ``proxy.discovery.ProfileState``."""

    @property
    def profile(self) -> Mapping[str, Any] | None: ...
    @property
    def version(self) -> int: ...


class Attempts(Generic[E]):
    """One client request and its attempts (the original, then retries)."""

    __slots__ = ("_destination", "attempt", "replayable", "route", "started", "tried")

    def __init__(self, destination: Destination[E], route: Route, now: float) -> None:
        self._destination = destination
        self.route = route
        self.started = now
        self.attempt = 1
        self.tried: set[Key] = set()
        self.replayable = True
        """Set to False when the request body outgrew the retry buffer: no retry then."""

    @property
    def deadline(self) -> float | None:
        """When the route timeout fires (for ``trio.move_on_at``), None without one."""
        return None if self.route.timeout is None else self.started + self.route.timeout

    def pick(self, now: float) -> Pick[E] | NoEndpoint:
        """The endpoint for the next attempt (one not yet tried, if any other is ready)."""
        choice = self._destination.balancer.pick(now, avoid=self.tried)
        if isinstance(choice, Pick):
            self.tried.add(key_of(choice.endpoint))
        return choice

    def finished(
        self,
        pick: Pick[E],
        now: float,
        *,
        status: int | None = None,
        grpc_status: int | None = None,
        outcome: Outcome | None = None,
        rtt: float | None = None,
    ) -> Retry | GiveUp:
        """The attempt sent to ``pick`` ended: with a response ``status`` (classified by the
        route), or with an explicit ``outcome`` (CONNECT_FAILED, FAILURE for a broken
        connection or a timeout, CANCELLED). Returns whether to try again."""
        if outcome is None:
            if status is None:
                raise ValueError("finished() needs a status or an outcome")
            outcome = classify(self.route, status, grpc_status)
        destination = self._destination
        destination.balancer.finished(pick, now, outcome, rtt)
        decision = destination.retries.decide(
            self.route,
            self.attempt,
            outcome,
            now,
            replayable=self.replayable,
            started=self.started,
        )
        if isinstance(decision, Retry):
            self.attempt = decision.attempt
        return decision


class Destination(Generic[E]):
    """Balancing, routes and retries of one outbound authority (``host:port``)."""

    def __init__(
        self,
        settings: BalanceSettings | None = None,
        *,
        rng: random.Random,
        now: float = 0.0,
        max_retries: int = 3,
    ) -> None:
        self.balancer: Balancer[E] = Balancer(settings, rng=rng, now=now)
        self.routes = RouteTable()
        self.retries = RetryPolicy(RetryBudget(self.routes.budget), max_retries=max_retries)
        self._endpoints_version = -1
        self._profile_version = -1

    def sync_endpoints(self, endpoint_set: EndpointSetLike[E], now: float) -> bool:
        """Follow discovery's current ``EndpointSet``; return whether anything changed."""
        if endpoint_set.version == self._endpoints_version:
            return False
        self._endpoints_version = endpoint_set.version
        self.balancer.update(endpoint_set.endpoints, now)
        return True

    def sync_profile(self, state: ProfileStateLike) -> str | None:
        """Follow discovery's current ``ProfileState``. A malformed profile keeps the previous
        routes; the returned message says why (for one log line), None when applied."""
        if state.version == self._profile_version:
            return None
        self._profile_version = state.version
        if state.profile is None:
            return None  # not resolved yet, or the stream is down: keep what we have
        try:
            table = RouteTable.from_profile(state.profile)
        except ProfileError as error:
            return str(error)
        if table.budget != self.routes.budget:  # a new budget starts empty, as in Linkerd
            self.retries.budget = RetryBudget(table.budget)
        self.routes = table
        return None

    def begin(self, method: str, path: str, now: float) -> Attempts[E]:
        """A client request arrived: match its route and deposit into the retry budget."""
        self.retries.started(now)
        return Attempts(self, self.routes.match(method, path), now)
