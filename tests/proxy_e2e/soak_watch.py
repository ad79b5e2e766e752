"""What the soaks share: bounded load loops, h2load in a pod, and the proxies' growth rule.

The growth rule: each proxy's resident memory is sampled every second; after a warm-up (the
first fifth of the samples), the peak of the last third may exceed the peak of the first third
only by ``RSS_ALLOWANCE_KIB`` or a tenth of that early peak, whichever is larger (allocator
noise, not a leak). Open descriptors must come back to their idle count (plus two) once the
load stops: a leaked connection keeps its descriptors.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.harness.netns import Netns

__all__ = [
    "FDS_SLACK",
    "RSS_ALLOWANCE_KIB",
    "RssSummary",
    "Samples",
    "fds",
    "h2load_counts",
    "loop",
    "rss_kib",
    "sample",
    "start_h2load",
    "summarize_rss",
    "wait_fds_idle",
]

RSS_ALLOWANCE_KIB: Final = 6 * 1024
FDS_SLACK: Final = 2
_H2LOAD_REQUESTS: Final = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def loop(until: float, interval: float, step: Callable[[], None], errors: list[str]) -> None:
    """Run ``step`` every ``interval`` seconds until ``until``, recording failures."""
    next_at = time.monotonic()
    while time.monotonic() < until:
        try:
            step()
        except Exception as exc:
            errors.append(repr(exc))
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def start_h2load(pod: Netns, args: list[str], url: str, seconds: float) -> subprocess.Popen[str]:
    """``h2load <args> -D <seconds> <url>`` in ``pod``, its output (stderr too) on stdout."""
    return subprocess.Popen(
        pod.exec_argv(["h2load", *args, "-D", str(int(seconds)), url]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def h2load_counts(output: str) -> tuple[int, int]:
    """h2load's ``(done, succeeded)`` requests from its summary."""
    match = _H2LOAD_REQUESTS.search(output)
    assert match is not None, output
    return int(match.group(2)), int(match.group(3))


@dataclass
class Samples:
    """Per proxy name: resident memory (KiB) and open descriptors, one sample a second."""

    rss: dict[str, list[int]]
    fds: dict[str, list[int]]


def sample(proxies: Mapping[str, int], until: float) -> Samples:
    """Sample each proxy's (name: pid) RSS and descriptors every second until ``until``."""
    samples = Samples({name: [] for name in proxies}, {name: [] for name in proxies})
    next_at = time.monotonic()
    while time.monotonic() < until:
        for name, pid in proxies.items():
            samples.rss[name].append(rss_kib(pid))
            samples.fds[name].append(fds(pid))
        next_at += 1
        time.sleep(max(0.0, next_at - time.monotonic()))
    return samples


@dataclass(frozen=True)
class RssSummary:
    """One proxy's RSS series (KiB) under the growth rule."""

    start: int
    early: int  # peak of the first third after the warm-up
    late: int  # peak of the last third
    allowance: int

    @property
    def grew(self) -> bool:
        return self.late - self.early > self.allowance

    def __str__(self) -> str:
        return f"start {self.start} early {self.early} late {self.late} (KiB)"


def summarize_rss(series: list[int]) -> RssSummary:
    warm = series[len(series) // 5 :]
    third = max(1, len(warm) // 3)
    early, late = max(warm[:third]), max(warm[-third:])
    return RssSummary(series[0], early, late, max(RSS_ALLOWANCE_KIB, early // 10))


def wait_fds_idle(
    proxies: Mapping[str, int], idle: Mapping[str, int], timeout: float
) -> dict[str, int]:
    """Wait up to ``timeout`` seconds for every proxy's descriptors to come back to its idle
    count (plus ``FDS_SLACK``); return the counts at the end."""
    deadline = time.monotonic() + timeout
    for name, pid in proxies.items():
        while fds(pid) > idle[name] + FDS_SLACK and time.monotonic() < deadline:
            time.sleep(0.1)
    return {name: fds(pid) for name, pid in proxies.items()}
