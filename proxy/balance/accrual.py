"""Failure accrual of one endpoint: consecutive failures eject it, a single probe restores it.

Theory of operation (Linkerd's ``consecutive`` failure accrual)::

    HEALTHY --N consecutive failures--> EJECTED(until = now + backoff)
    EJECTED --now >= until--> PROBING (one request may be sent: the probe)
    PROBING --probe succeeds--> HEALTHY (backoff reset)
    PROBING --probe fails--> EJECTED(backoff doubled, jittered, capped)

Any success while healthy resets the failure count. Outcomes of requests sent before an ejection
that finish during it are ignored: only the probe decides. A cancelled probe (the client went
away) frees the probe slot without deciding anything.
"""

from __future__ import annotations

import enum
import random

from .outcome import Outcome
from .settings import BalanceSettings

__all__ = ["Accrual", "Health"]


class Health(enum.Enum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    PROBING = "probing"


class Accrual:
    """Failure-accrual state of one endpoint; times are seconds on the caller's clock."""

    __slots__ = (
        "_rng",
        "_settings",
        "backoff",
        "ejected_until",
        "ejections",
        "failures",
        "health",
        "probe_in_flight",
    )

    def __init__(self, settings: BalanceSettings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng
        self.health = Health.HEALTHY
        self.failures = 0
        self.ejections = 0
        """Consecutive ejections without a successful probe: the backoff's exponent."""
        self.backoff = 0.0
        self.ejected_until = 0.0
        self.probe_in_flight = False

    def available(self, now: float) -> bool:
        """May a request be sent now? (An ejected endpoint whose backoff ran out starts probing.)"""
        if self.health is Health.HEALTHY:
            return True
        if self.health is Health.EJECTED:
            if now < self.ejected_until:
                return False
            self.health = Health.PROBING
            self.probe_in_flight = False
        return not self.probe_in_flight

    def sent(self) -> bool:
        """A request was picked for this endpoint; return whether it is the probe."""
        if self.health is Health.PROBING and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def finished(self, outcome: Outcome, now: float, *, probe: bool) -> None:
        if outcome is Outcome.CANCELLED:
            if probe and self.health is Health.PROBING:
                self.probe_in_flight = False
            return
        failed = outcome is not Outcome.SUCCESS
        if self.health is Health.HEALTHY:
            self.failures = self.failures + 1 if failed else 0
            if self.failures >= self._settings.failure_threshold:
                self._eject(now)
        elif probe and self.health is Health.PROBING:
            if failed:
                self._eject(now)
            else:
                self.health = Health.HEALTHY
                self.failures = 0
                self.ejections = 0
                self.probe_in_flight = False

    def _eject(self, now: float) -> None:
        settings = self._settings
        base = min(settings.min_backoff * 2.0**self.ejections, settings.max_backoff)
        jittered = base * (1.0 + settings.jitter * self._rng.random())
        self.backoff = min(jittered, settings.max_backoff)
        self.ejections += 1
        self.health = Health.EJECTED
        self.ejected_until = now + self.backoff
        self.probe_in_flight = False
        self.failures = 0
