"""h2load's per-request logs (``--log-file``): parsing, merging, percentiles, spacing.

Each log line is ``<start µs since the epoch>\\t<HTTP status>\\t<µs until the response ended>``.
Pure functions only (no processes, no clock): the benches (``bench_proxy``, ``bench_mesh``) and
the spaced-load driver (``bench/spaced_load.py``) share them, and ``tests/bench/`` tests them.

Spacing: with ``--rps`` each h2load connection sends on a libev repeating timer. Timers fire
late, never early, so a connection's *timer phase* (the instant modulo the period at which its
timer is due) is best estimated as the earliest, modulo the period, of a few requests' starts.
``plan_slots`` assigns processes, by their phases, to ``slots`` evenly spaced slots of one period.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Entry",
    "GapStats",
    "common_window",
    "gap_stats",
    "h2load_summary",
    "latency_ms",
    "merge",
    "parse_log",
    "percentile",
    "plan_slots",
    "slot_error",
    "timer_phase",
]

CLOSE_US = 200  # "bunched": a request starting within 0.2 ms of the previous one


@dataclass(frozen=True, order=True)
class Entry:
    start_us: int
    status: int
    latency_us: int


@dataclass(frozen=True)
class GapStats:
    """Gaps between consecutive request starts of merged logs."""

    count: int  # number of gaps (requests - 1)
    median_us: float
    close_share: float  # share of requests starting within CLOSE_US of the previous one


def h2load_summary(stdout: str, stderr: str = "") -> str:
    """``stdout`` if h2load reported every request done (``0 failed, 0 errored``); else raise
    ``RuntimeError`` with the end of its output."""
    if "0 failed, 0 errored" not in stdout:
        raise RuntimeError(f"h2load failed: {stdout[-800:]}{stderr[-400:]}")
    return stdout


def parse_log(text: str) -> list[Entry]:
    """The complete lines of a log (a line still being written, without its newline, is left
    out, so a log can be read while h2load runs). Raises ``ValueError`` on a malformed line."""
    lines = text.split("\n")[:-1]  # the last piece has no newline: empty or partial
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"h2load log line {number}: expected 3 fields: {line!r}")
        start, status, latency = (int(field) for field in fields)
        entries.append(Entry(start, status, latency))
    return entries


def merge(logs: Iterable[Sequence[Entry]]) -> list[Entry]:
    """All entries of several logs, ordered by start time."""
    return sorted(entry for log in logs for entry in log)


def common_window(logs: Sequence[Sequence[Entry]]) -> tuple[int, int]:
    """The start times ``[lo, hi]`` during which every log was sending: from the latest first
    request to the earliest last request. Raises ``ValueError`` if a log is empty or the logs
    never overlap."""
    if not logs or any(not log for log in logs):
        raise ValueError("an h2load log is empty")
    lo = max(min(entry.start_us for entry in log) for log in logs)
    hi = min(max(entry.start_us for entry in log) for log in logs)
    if lo > hi:
        raise ValueError("the h2load processes never ran at the same time")
    return lo, hi


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at rank ``int(len * fraction)`` (clamped) of an ascending sequence: the
    definition the benches have always used, so figures stay comparable across sessions."""
    if not ordered:
        raise ValueError("percentile of no values")
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def latency_ms(entries: Iterable[Entry]) -> tuple[float, float]:
    """p50 and p99 latency in milliseconds."""
    ordered = sorted(entry.latency_us for entry in entries)
    return percentile(ordered, 0.5) / 1000, percentile(ordered, 0.99) / 1000


def gap_stats(entries: Sequence[Entry]) -> GapStats:
    """How evenly spaced the request starts of (merged, ordered) ``entries`` are."""
    starts = sorted(entry.start_us for entry in entries)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    if not gaps:
        raise ValueError("gap statistics need at least two requests")
    close = sum(1 for gap in gaps if gap < CLOSE_US)
    return GapStats(len(gaps), statistics.median(gaps), close / len(gaps))


def timer_phase(
    entries: Sequence[Entry], period_us: int, *, samples: int = 3, recent: bool = False
) -> int | None:
    """The phase (µs, modulo ``period_us``) of the rps timer of a one-connection h2load: the
    earliest, circularly, of the start residues of ``samples`` requests, the first ones after
    request 0 (which goes out on connecting, not on the timer) or, with ``recent``, the last
    ones (a timer that fires more than a period late starts a new phase). ``None`` until the
    log has enough requests."""
    if len(entries) <= samples:
        return None
    starts = sorted(entry.start_us for entry in entries)
    chosen = starts[-samples:] if recent else starts[1 : samples + 1]
    anchor = chosen[0] % period_us
    half = period_us // 2
    earliest = min((start - anchor + half) % period_us - half for start in chosen)
    return (anchor + earliest) % period_us


def slot_error(phase: int, reference: int, slot: int, *, period_us: int, slots: int) -> int:
    """Circular distance (µs) between ``phase`` and slot ``slot``'s instant."""
    target = (reference + slot * period_us // slots) % period_us
    distance = abs(phase - target) % period_us
    return min(distance, period_us - distance)


def plan_slots(
    phases: Mapping[int, int],
    taken: Iterable[int],
    reference: int | None,
    *,
    period_us: int,
    slots: int,
    tolerance_us: int,
) -> tuple[int, dict[int, int]]:
    """Assign candidates (``{candidate: phase}``) to free slots within ``tolerance_us``.

    Slot ``s`` is due at ``reference + s * period / slots``. Without a reference yet, each
    candidate's phase is tried as the reference and the one placing most candidates wins.
    Returns ``(reference, {candidate: slot})``; the closest candidate wins a contested slot."""
    if not phases and reference is None:
        raise ValueError("no candidate to take the reference phase from")
    references = [reference] if reference is not None else sorted(set(phases.values()))
    best: tuple[int, dict[int, int]] | None = None
    for ref in references:
        free = set(range(slots)) - set(taken)
        options = sorted(
            (slot_error(phase, ref, slot, period_us=period_us, slots=slots), candidate, slot)
            for candidate, phase in phases.items()
            for slot in free
        )
        placed: dict[int, int] = {}
        for error, candidate, slot in options:
            if error <= tolerance_us and slot in free and candidate not in placed:
                placed[candidate] = slot
                free.discard(slot)
        if best is None or len(placed) > len(best[1]):
            best = (ref, placed)
    assert best is not None
    return best
