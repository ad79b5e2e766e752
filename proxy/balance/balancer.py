"""Power-of-two-choices over peak-EWMA load, on an endpoint set driven by discovery.

Theory of operation: the balancer holds *active* endpoints (the ones discovery lists) and
*draining* ones (removed by discovery while requests were in flight on them). Per request,
``pick(now)`` keeps the active endpoints that failure accrual lets through, draws two distinct
ones at random and takes the one with the lower ``peak-EWMA x (pending + 1) / weight`` cost
(weight relative to discovery's default 10000; weight 0 means "never pick"). ``finished`` closes
the request: pending drops, the RTT feeds the estimate, the outcome feeds failure accrual.

A removed endpoint is never picked again; its in-flight requests finish and are tracked until
zero, then it is forgotten. Re-added before that, it is revived with its estimate and counters.

No I/O and no clock: ``now`` is seconds on the caller's monotonic clock (``trio.current_time()``)
and randomness comes from an injected ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .accrual import Accrual, Health
from .ewma import PeakEwma
from .outcome import Outcome
from .reasons import ALL_ENDPOINTS_EJECTED, NO_ENDPOINTS
from .settings import BalanceSettings

__all__ = [
    "Balancer",
    "EndpointLike",
    "EndpointStats",
    "Key",
    "NoEndpoint",
    "Pick",
    "key_of",
]

Key = tuple[str, int]
_DEFAULT_WEIGHT = 10_000  # what the destination service sends when a weight is not set


class EndpointLike(Protocol):
    """What the balancer needs of ``proxy.discovery.Endpoint`` (which satisfies it)."""

    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def weight(self) -> int: ...


E = TypeVar("E", bound=EndpointLike)


def key_of(endpoint: EndpointLike) -> Key:
    return (endpoint.address, endpoint.port)


@dataclass(frozen=True, slots=True)
class Pick(Generic[E]):
    """Send this request to ``endpoint``; hand this object back to ``Balancer.finished``."""

    endpoint: E
    started: float
    probe: bool
    """The single request that decides whether an ejected endpoint comes back."""
    token: object = field(default=None, repr=False, compare=False)
    """Which incarnation of the endpoint was picked: a pick made before the endpoint was
    forgotten and added anew must not count against the new one."""


@dataclass(frozen=True, slots=True)
class NoEndpoint:
    """Nothing to send to; ``reason`` is a slug from ``proxy.balance.reasons``."""

    reason: str


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """A read-only view of one endpoint, for metrics, the admin page and tests."""

    key: Key
    pending: int
    rtt_estimate: float
    health: str
    """``healthy``, ``ejected`` or ``probing`` (failure accrual)."""
    probe_at: float | None
    """When an ejected endpoint's backoff ends and its probe may be sent (None if not ejected)."""
    draining: bool
    requests: int


class _State(Generic[E]):
    __slots__ = ("accrual", "endpoint", "ewma", "pending", "requests")

    def __init__(self, endpoint: E, settings: BalanceSettings, rng: random.Random, now: float):
        self.endpoint = endpoint
        self.ewma = PeakEwma(default_rtt=settings.default_rtt, decay=settings.decay, now=now)
        self.accrual = Accrual(settings, rng)
        self.pending = 0
        self.requests = 0

    def cost(self, now: float) -> float:
        weight = self.endpoint.weight
        return self.ewma.load(self.pending, now) * _DEFAULT_WEIGHT / weight


def _ready(state: _State[E], now: float) -> bool:
    return state.endpoint.weight > 0 and state.accrual.available(now)


class Balancer(Generic[E]):
    """The per-destination picker. Not thread-safe; one per destination, on one Trio thread."""

    def __init__(
        self, settings: BalanceSettings | None = None, *, rng: random.Random, now: float = 0.0
    ) -> None:
        self._settings = settings or BalanceSettings()
        self._rng = rng
        self._active: dict[Key, _State[E]] = {}
        self._draining: dict[Key, _State[E]] = {}
        self._states: list[_State[E]] | None = None  # the active ones as a list, for sampling

    # -- discovery --------------------------------------------------------------------------------

    def update(self, endpoints: Mapping[Key, E], now: float) -> None:
        """Make the active set exactly ``endpoints`` (``EndpointSet.endpoints`` of discovery)."""
        for key in [k for k in self._active if k not in endpoints]:
            self._drain(key)
        self.add(endpoints.values(), now)

    def add(self, endpoints: Iterable[E], now: float) -> None:
        """Endpoints discovery added (an ``add`` line); a known one gets its new metadata."""
        for endpoint in endpoints:
            key = key_of(endpoint)
            state = self._active.get(key) or self._draining.pop(key, None)
            if state is None:
                state = _State(endpoint, self._settings, self._rng, now)
            state.endpoint = endpoint
            self._active[key] = state
            self._states = None

    def remove(self, keys: Iterable[Key]) -> None:
        """Endpoints discovery removed (a ``remove`` line): drain them."""
        for key in keys:
            self._drain(key)

    def _drain(self, key: Key) -> None:
        state = self._active.pop(key, None)
        self._states = None
        if state is not None and state.pending > 0:
            self._draining[key] = state

    # -- per request ------------------------------------------------------------------------------

    def pick(self, now: float, *, avoid: Collection[Key] = ()) -> Pick[E] | NoEndpoint:
        """Choose the endpoint for one request (power of two choices).

        ``avoid``: endpoints this request already failed on (for a retry). They are left out
        unless nothing else is ready: a fast-failing endpoint looks cheap, and a retry sent back
        to it would likely fail again (Envoy's ``previous_hosts`` retry predicate).
        """
        if not self._active:
            return NoEndpoint(NO_ENDPOINTS)
        if self._states is None:
            self._states = list(self._active.values())
        if not avoid and len(self._states) > 1:
            # Fast path: two distinct endpoints drawn from all active ones are, when both are
            # ready, a uniform pair of ready ones; otherwise draw again among the ready ones
            # below. The mixture is exactly p2c over the ready set, without an O(n) scan.
            first, second = self._rng.sample(self._states, 2)
            if _ready(first, now) and _ready(second, now):
                return self._sent(first if first.cost(now) <= second.cost(now) else second, now)
        ready = [state for state in self._states if _ready(state, now)]
        if not ready:
            if any(state.endpoint.weight > 0 for state in self._active.values()):
                return NoEndpoint(ALL_ENDPOINTS_EJECTED)
            return NoEndpoint(NO_ENDPOINTS)
        if avoid:
            ready = [s for s in ready if key_of(s.endpoint) not in avoid] or ready
        if len(ready) == 1:
            chosen = ready[0]
        else:
            first, second = self._rng.sample(ready, 2)
            chosen = first if first.cost(now) <= second.cost(now) else second
        return self._sent(chosen, now)

    def _sent(self, chosen: _State[E], now: float) -> Pick[E]:
        chosen.pending += 1
        chosen.requests += 1
        return Pick(chosen.endpoint, now, chosen.accrual.sent(), chosen)

    def finished(
        self, pick: Pick[E], now: float, outcome: Outcome, rtt: float | None = None
    ) -> None:
        """The request of ``pick`` ended. ``rtt`` defaults to ``now - pick.started`` (seconds)."""
        key = key_of(pick.endpoint)
        state = self._active.get(key)
        if state is None:
            state = self._draining.get(key)
        if state is None or state is not pick.token or state.pending == 0:
            return  # a stale pick (that endpoint was forgotten since): nothing to account
        state.pending -= 1
        if outcome is not Outcome.CANCELLED:
            state.ewma.observe(now - pick.started if rtt is None else rtt, now)
        state.accrual.finished(outcome, now, probe=pick.probe)
        if state.pending == 0 and self._draining.get(key) is state:
            del self._draining[key]

    # -- inspection -------------------------------------------------------------------------------

    def stats(self) -> list[EndpointStats]:
        """Every tracked endpoint, active first, in discovery's order."""
        return [
            EndpointStats(
                key=key,
                pending=state.pending,
                rtt_estimate=state.ewma.estimate,
                health=state.accrual.health.value,
                probe_at=(
                    state.accrual.ejected_until if state.accrual.health is Health.EJECTED else None
                ),
                draining=draining,
                requests=state.requests,
            )
            for draining, states in ((False, self._active), (True, self._draining))
            for key, state in states.items()
        ]

    def draining(self) -> dict[Key, int]:
        """Removed endpoints still finishing requests, with how many are in flight."""
        return {key: state.pending for key, state in self._draining.items()}

    def ejected(self) -> list[Key]:
        return [k for k, s in self._active.items() if s.accrual.health is not Health.HEALTHY]

    def __len__(self) -> int:
        return len(self._active)
