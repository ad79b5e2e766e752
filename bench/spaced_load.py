"""Evenly spaced load: 1,000 requests/s from 10 one-connection h2load processes, staggered.

One ``h2load -c 10 --rps 100`` starts its 10 connections' timers at the same instant, so every
10 ms all 10 requests leave together and latency measures how fast a burst of 10 is worked off.
Here each of 10 processes runs ``h2load -c 1 --rps 100`` (its own ``--log-file``), and the
processes' timers are placed in 10 slots 1 ms apart.

How the stagger is made (starting a process takes 9-20 ms, more through ``ip netns exec``, with
several ms of jitter, so starting processes 1 ms apart leaves their phases random):

1. Launch a round of candidates (the free slots plus 3, at most 8: starting many processes at
   once delays the timers of those already running).
2. Read each candidate's log until it holds 7 requests; its timer phase is the earliest,
   modulo 10 ms, of the starts of requests 1..6 (timers fire late, never early; request 0
   leaves on connecting). See ``h2load_logs.timer_phase``.
3. The first round picks the reference phase that places the most candidates; slot ``s`` is due
   at ``reference + s ms``. A candidate within ``TOLERANCE_US`` of a free slot keeps it (the
   closest wins a contested slot); the others are stopped and their logs discarded.
4. Repeat until the 10 slots are full, then wait 0.1 s and check from each kept process's
   last 10 requests that its phase held (a timer firing over a period late, as when the busy
   machine starts other processes, restarts at a new phase); replace those that drifted.
   After ``MAX_ROUNDS`` rounds or 3/4 of ``RAMP_S``, the last round takes any phase and the
   check is skipped, so that the processes still overlap for about ``seconds``.

Each process is given the request count that ends it at a common instant (``RAMP_S`` +
``seconds`` after the first launch, and never fewer than ``100 * seconds``), so all 10 run
together for about ``seconds``. Latency percentiles and spacing figures come from the merged
logs restricted to that common window (from the last process's first request to the first
process's last), and the proxies' CPU is measured over it too: from the moment the last slot is
filled until the first process exits. The spacing actually achieved is measured, not assumed
(``h2load_logs.gap_stats``: median gap between consecutive request starts across processes, and
the share of requests starting within 0.2 ms of the previous one). Every kept process must
report ``0 failed, 0 errored``.

Even when every timer holds its slot, each fires 0-1 ms late (libev waits in whole
milliseconds), so a few percent of requests (about 4% measured on a quiet machine) start within
0.2 ms of another: the floor of this method. A busy machine delays timers further.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench import h2load_logs, procstat

__all__ = ["HEADER", "Launcher", "SpacedSample", "TITLE", "print_table", "row", "run_spaced"]

PROCESSES = 10
RATE = 100  # requests/s per process: 1,000 in all
PERIOD_US = 1_000_000 // RATE
TOLERANCE_US = 250  # a new process's timer phase vs its slot
DRIFT_US = 400  # a kept process's recent phase vs its slot
FIRST_SAMPLES = 6  # requests read for a new process's phase (each is 0-1 ms late)
MAX_ROUNDS = 40
RAMP_S = 2.0
_PHASE_TIMEOUT_S = 10.0
_SETTLE_S = 0.1  # before checking that the kept processes' phases held
_RUN_TIMEOUT_S = 120.0

TITLE = "evenly spaced (10 h2load processes, 1 connection each, staggered)"

# (argv, file for stdout and stderr) -> the started process
Launcher = Callable[[list[str], IO[bytes]], "subprocess.Popen[bytes]"]


@dataclass
class SpacedSample:
    p50_ms: float
    p99_ms: float
    cores: tuple[float, ...]
    rss_mb: tuple[float, ...]
    achieved: float  # requests/s started in the common window
    gaps: h2load_logs.GapStats
    window_s: float
    rounds: int
    candidates: int


@dataclass
class _Candidate:
    process: subprocess.Popen[bytes]
    log: Path
    output: IO[bytes]
    entries: list[h2load_logs.Entry] = field(default_factory=list)

    def read(self) -> None:
        self.entries = h2load_logs.parse_log(self.log.read_text() if self.log.exists() else "")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()

    def summary(self) -> str:
        self.output.seek(0)
        text = self.output.read().decode(errors="replace")
        return h2load_logs.h2load_summary(text)


class _Launches:
    """The h2load processes of one spaced run: launched, placed in slots, stopped."""

    def __init__(
        self, launch: Launcher, url: str, h1: bool, *, seconds: int, root: Path, name: str
    ):
        self.launch, self.url, self.h1 = launch, url, h1
        self.seconds, self.root, self.name = seconds, root, name
        now = time.monotonic()
        self.end = now + RAMP_S + seconds  # when every process should be done
        self.settle_by = now + RAMP_S * 0.75  # then take any phase: the window must stay long
        self.every: list[_Candidate] = []
        self.rounds = 0

    def start(self) -> _Candidate:
        count = max(RATE * self.seconds, math.ceil((self.end - time.monotonic()) * RATE))
        base = self.root / f"{self.name}-{len(self.every) + 1}"
        log = base.with_suffix(".log")
        argv = ["h2load", "--log-file", str(log), "-n", str(count), "-c", "1", "--rps", str(RATE)]
        argv += [*(["--h1"] if self.h1 else ["-m", "1"]), self.url]
        output = base.with_suffix(".out").open("w+b")
        try:
            candidate = _Candidate(self.launch(argv, output), log, output)
        except BaseException:
            output.close()
            raise
        self.every.append(candidate)
        return candidate

    def fill(self) -> dict[int, _Candidate]:
        """Processes in all slots, ``{slot: process}`` (see the module's docstring)."""
        kept: dict[int, _Candidate] = {}
        reference: int | None = None
        while True:
            free = PROCESSES - len(kept)
            if not free:
                time.sleep(_SETTLE_S)
                drifted = [slot for slot, c in kept.items() if _drifted(c, reference, slot)]
                if not drifted or self._late():
                    return kept
                for slot in drifted:
                    kept.pop(slot).stop()
                continue
            self.rounds += 1
            last = self._late()
            round_ = []
            for _ in range(free if last else min(8, free + 3)):
                round_.append(self.start())
                time.sleep(PERIOD_US / PROCESSES / 1e6)
            reference, placed = h2load_logs.plan_slots(
                _phases(round_),
                kept.keys(),
                reference,
                period_us=PERIOD_US,
                slots=PROCESSES,
                tolerance_us=PERIOD_US if last else TOLERANCE_US,
            )
            for index, candidate in enumerate(round_):
                if index in placed:
                    kept[placed[index]] = candidate
                else:
                    candidate.stop()

    def _late(self) -> bool:
        return self.rounds >= MAX_ROUNDS or time.monotonic() > self.settle_by

    def stop(self) -> None:
        for candidate in self.every:
            candidate.stop()


def run_spaced(
    launch: Launcher,
    url: str,
    h1: bool,
    *,
    seconds: int,
    pids: Sequence[int],
    root: Path,
    name: str,
) -> SpacedSample:
    """One spaced run against ``url``; ``pids`` are the proxies whose CPU and RSS are taken."""
    root.mkdir(parents=True, exist_ok=True)
    launches = _Launches(launch, url, h1, seconds=seconds, root=root, name=name)
    try:
        kept = list(launches.fill().values())
        before = [procstat.cpu_seconds(pid) for pid in pids]
        started = time.monotonic()
        while all(candidate.process.poll() is None for candidate in kept):
            if time.monotonic() - started > _RUN_TIMEOUT_S:
                raise RuntimeError(f"h2load still running after {_RUN_TIMEOUT_S:.0f}s")
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        used = [procstat.cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
        rss = tuple(procstat.rss_mb(pid) for pid in pids)
        for candidate in kept:
            candidate.process.wait(_RUN_TIMEOUT_S)
            candidate.summary()  # raises unless 0 failed, 0 errored
            candidate.read()
    finally:
        launches.stop()
    logs = [candidate.entries for candidate in kept]
    lo, hi = h2load_logs.common_window(logs)
    window = [e for e in h2load_logs.merge(logs) if lo <= e.start_us <= hi]
    p50, p99 = h2load_logs.latency_ms(window)
    window_s = (hi - lo) / 1e6
    return SpacedSample(
        p50_ms=p50,
        p99_ms=p99,
        cores=tuple(seconds_used / elapsed for seconds_used in used),
        rss_mb=rss,
        achieved=len(window) / window_s if window_s > 0 else 0.0,
        gaps=h2load_logs.gap_stats(window),
        window_s=window_s,
        rounds=launches.rounds,
        candidates=len(launches.every),
    )


def _drifted(candidate: _Candidate, reference: int | None, slot: int) -> bool:
    """Whether a kept process's timer left its slot (a timer more than a period late, as when
    the machine is busy starting other processes, restarts at a new phase)."""
    candidate.read()
    phase = h2load_logs.timer_phase(candidate.entries, PERIOD_US, samples=10, recent=True)
    if phase is None or reference is None:  # too few requests yet to tell
        return False
    error = h2load_logs.slot_error(phase, reference, slot, period_us=PERIOD_US, slots=PROCESSES)
    return error > DRIFT_US


def _phases(candidates: list[_Candidate]) -> dict[int, int]:
    """Each candidate's timer phase, read from its log as soon as it has enough requests."""
    phases: dict[int, int] = {}
    deadline = time.monotonic() + _PHASE_TIMEOUT_S
    while len(phases) < len(candidates):
        for index, candidate in enumerate(candidates):
            if index in phases:
                continue
            candidate.read()
            phase = h2load_logs.timer_phase(candidate.entries, PERIOD_US, samples=FIRST_SAMPLES)
            if phase is not None:
                phases[index] = phase
            elif candidate.process.poll() is not None:
                candidate.summary()  # raises with h2load's output if it failed
                raise RuntimeError("h2load ended before its timer phase could be read")
        if time.monotonic() > deadline:
            wanted = FIRST_SAMPLES + 1
            raise RuntimeError(f"h2load sent no {wanted} requests in {_PHASE_TIMEOUT_S:.0f}s")
        time.sleep(0.005)
    return phases


HEADER = (
    f"{'protocol':8} {'path':9} {'p50 ms':>7} {'p99 ms':>7} {'cores':>13} {'RSS MB':>11} "
    f"{'sent req/s':>10} {'gap ms':>6} {'<0.2ms':>6} {'window s':>8} {'started':>7}"
)


def row(protocol: str, name: str, samples: Sequence[SpacedSample]) -> tuple[str, float]:
    """One table line (under ``HEADER``) of medians over ``samples``, and the median p99 (ms).

    ``gap ms``: median gap between consecutive request starts; ``<0.2ms``: share of requests
    starting within 0.2 ms of the previous one; ``started``: h2load processes launched to fill
    the 10 slots."""
    pids = range(len(samples[0].cores))
    cores = " / ".join(f"{statistics.median(s.cores[i] for s in samples):.3f}" for i in pids)
    rss = " / ".join(f"{statistics.median(s.rss_mb[i] for s in samples):.1f}" for i in pids)
    p99 = statistics.median(s.p99_ms for s in samples)
    line = (
        f"{protocol:8} {name:9} {statistics.median(s.p50_ms for s in samples):7.2f} {p99:7.2f} "
        f"{cores or '-':>13} {rss or '-':>11} "
        f"{statistics.median(s.achieved for s in samples):10.0f} "
        f"{statistics.median(s.gaps.median_us for s in samples) / 1000:6.2f} "
        f"{statistics.median(s.gaps.close_share for s in samples):6.1%} "
        f"{statistics.median(s.window_s for s in samples):8.1f} "
        f"{statistics.median(s.candidates for s in samples):7.0f}"
    )
    return line, p99


def print_table(protocol: str, spaced: Mapping[str, Sequence[SpacedSample]]) -> dict[str, float]:
    """Print ``TITLE``, ``HEADER`` and a row per path (named ``<path>~``), indented under the
    burst table; return each path's median p99 (ms)."""
    print(f"  {TITLE}:")
    print(f"  {HEADER}")
    p99s = {}
    for name, samples in spaced.items():
        line, p99s[name] = row(protocol, f"{name}~", samples)
        print(f"  {line}", flush=True)
    return p99s
