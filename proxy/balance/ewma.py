"""Peak-EWMA latency estimate of one endpoint (tower's ``PeakEwma``, which Linkerd uses).

Theory of operation: the estimate starts at ``default_rtt``. An observed RTT above it replaces it
at once (the *peak*: a slow endpoint is believed slow immediately); a lower one pulls it down
exponentially, weighted by how long ago the last update was (``exp(-elapsed / decay)``). Reading
the load decays the estimate toward zero for the time elapsed, so an endpoint that has been idle
(for example after a slow spell) looks cheap again and is tried anew. The load is
``estimate * (pending + 1)``: in-flight requests make an endpoint look proportionally busier.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["PeakEwma"]

_FLOOR: Final = 1e-6
"""Seconds. The least estimate a load is computed from, so that pending requests still count on
an endpoint idle long enough for its estimate to decay to (almost) zero."""


class PeakEwma:
    """The RTT estimate of one endpoint; times are seconds on the caller's monotonic clock."""

    __slots__ = ("_decay", "_updated", "estimate")

    def __init__(self, *, default_rtt: float, decay: float, now: float) -> None:
        self.estimate = default_rtt
        self._decay = decay
        self._updated = now

    def observe(self, rtt: float, now: float) -> float:
        """Fold one observed round trip (seconds) in; return the new estimate."""
        rtt = max(rtt, 0.0)
        if rtt > self.estimate:
            self.estimate = rtt
        else:
            elapsed = max(now - self._updated, 0.0)
            weight = math.exp(-elapsed / self._decay)
            self.estimate = self.estimate * weight + rtt * (1.0 - weight)
        self._updated = max(now, self._updated)
        return self.estimate

    def load(self, pending: int, now: float) -> float:
        """The cost of sending one more request here: decayed estimate x (pending + 1)."""
        return max(self.observe(0.0, now), _FLOOR) * (pending + 1)
