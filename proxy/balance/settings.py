"""The balancer's settings: peak-EWMA load and failure accrual, one frozen object.

Each field says its unit and why its default was chosen. The defaults are Linkerd's (see
``/work/shared/reference/linkerd.md`` §3 and Linkerd's ``balancer.linkerd.io/failure-accrual-*``
annotations) so an operator's knowledge of Linkerd carries over.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BalanceSettings", "BalanceSettingsError"]


class BalanceSettingsError(ValueError):
    """A balancer setting is out of range; the message names the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceSettings:
    default_rtt: float = 0.030
    """Seconds. The RTT an endpoint is assumed to have before its first response: Linkerd's
    ``DEFAULT_EWMA`` default RTT (30 ms), low enough that a new endpoint gets traffic soon."""

    decay: float = 10.0
    """Seconds. Time constant of the exponential decay of the RTT estimate toward lower
    observations (Linkerd's 10 s): a latency spike is remembered for about this long."""

    failure_threshold: int = 7
    """Consecutive failed responses (or connect failures) that eject an endpoint. Linkerd's
    ``failure-accrual-consecutive-max-failures`` default (7): one bad request never ejects."""

    min_backoff: float = 1.0
    """Seconds. First ejection's length, before jitter (Linkerd's ``min-penalty``, 1 s)."""

    max_backoff: float = 60.0
    """Seconds. Cap on an ejection's length, jitter included (Linkerd's ``max-penalty``, 1 min):
    an endpoint that keeps failing is still probed once a minute."""

    jitter: float = 0.5
    """Ratio 0-1. Up to this fraction of the backoff is added at random (Linkerd's
    ``jitter-ratio``, 0.5) so proxies that ejected an endpoint together do not probe it together."""

    def __post_init__(self) -> None:
        positive = {
            "default_rtt": self.default_rtt,
            "decay": self.decay,
            "min_backoff": self.min_backoff,
        }
        for name, value in positive.items():
            if not value > 0:
                raise BalanceSettingsError(f"{name} must be > 0 seconds, not {value!r}")
        if self.failure_threshold < 1:
            raise BalanceSettingsError(
                f"failure_threshold must be >= 1, not {self.failure_threshold!r}"
            )
        if not self.max_backoff >= self.min_backoff:
            raise BalanceSettingsError(
                f"max_backoff ({self.max_backoff!r}) must be >= min_backoff ({self.min_backoff!r})"
            )
        if not 0 <= self.jitter <= 1:
            raise BalanceSettingsError(f"jitter must be within 0-1, not {self.jitter!r}")
