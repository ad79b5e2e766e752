"""The retry budget (Linkerd's ``retryBudget``, tower's ``TpsBudget``): retries as a traffic share.

Theory of operation: every original request *deposits*, every retry *withdraws*. Over a sliding
window of ``ttl`` seconds, retries are allowed while::

    withdrawals < retry_ratio x deposits + min_retries_per_second x ttl

so at most 20 % extra load from retries (the ratio), but a quiet service may still retry 10 a
second (the reserve). The window is ``_SLOTS`` slots of ``ttl / _SLOTS`` seconds: the current
slot and the ``_SLOTS - 1`` before it count, older ones expire whole (memory is constant whatever
the request rate). ``window_start(now)`` says exactly which instants count.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from .reasons import BUDGET_EXHAUSTED

__all__ = ["BudgetSettings", "BudgetSettingsError", "RetryBudget"]

_SLOTS: Final = 10


class BudgetSettingsError(ValueError):
    """A retry budget field is out of range; the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSettings:
    retry_ratio: float = 0.2
    """Retries per original request, 0-1000 (Linkerd's ``retryRatio`` default 0.2: retries add at
    most 20 % load to a struggling service)."""

    min_retries_per_second: int = 10
    """Retries per second allowed whatever the traffic (Linkerd's default 10), so a low-traffic
    service can still retry."""

    ttl: float = 10.0
    """Seconds, 1-60 (Linkerd's default 10 s; tower refuses outside 1-60 s): how long a deposit or
    a withdrawal counts."""

    def __post_init__(self) -> None:
        if not 0 <= self.retry_ratio <= 1000:
            raise BudgetSettingsError(f"retry_ratio must be within 0-1000, not {self.retry_ratio}")
        if self.min_retries_per_second < 0:
            raise BudgetSettingsError(
                f"min_retries_per_second must be >= 0, not {self.min_retries_per_second}"
            )
        if not 1 <= self.ttl <= 60:
            raise BudgetSettingsError(f"ttl must be within 1-60 seconds, not {self.ttl}")

    @property
    def reserve(self) -> float:
        """Retries allowed in one window with no traffic at all."""
        return self.min_retries_per_second * self.ttl


class RetryBudget:
    """One budget per destination (shared by its routes, as in Linkerd)."""

    __slots__ = ("_slots", "_width", "settings")

    def __init__(self, settings: BudgetSettings | None = None) -> None:
        self.settings = settings or BudgetSettings()
        self._width = self.settings.ttl / _SLOTS
        self._slots: deque[list[int]] = deque()  # [slot index, deposits, withdrawals], oldest first

    def _slot(self, now: float) -> list[int]:
        index = math.floor(now / self._width)
        while self._slots and self._slots[0][0] <= index - _SLOTS:
            self._slots.popleft()
        if not self._slots or self._slots[-1][0] < index:
            self._slots.append([index, 0, 0])
        return self._slots[-1]  # a clock going backwards counts in the newest slot

    def window_start(self, now: float) -> float:
        """The earliest instant whose deposits and withdrawals count at ``now``."""
        return (math.floor(now / self._width) - _SLOTS + 1) * self._width

    def totals(self, now: float) -> tuple[int, int]:
        """(deposits, withdrawals) in the window at ``now``."""
        self._slot(now)
        return sum(s[1] for s in self._slots), sum(s[2] for s in self._slots)

    def deposit(self, now: float) -> None:
        """One original request (not a retry) was sent."""
        self._slot(now)[1] += 1

    def can_retry(self, now: float) -> str | None:
        """None if one more retry fits, else the slug saying why not."""
        deposits, withdrawals = self.totals(now)
        allowed = self.settings.retry_ratio * deposits + self.settings.reserve
        return None if withdrawals + 1 <= allowed else BUDGET_EXHAUSTED

    def withdraw(self, now: float) -> str | None:
        """Spend one retry if it fits (None), else return the refusal slug and spend nothing."""
        refusal = self.can_retry(now)
        if refusal is None:
            self._slot(now)[2] += 1
        return refusal
