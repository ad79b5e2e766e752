"""Run every benchmark module (``bench/bench_*.py``), or those named on the command line.

SIGTERM (``timeout``, a CI step ending) unwinds like Ctrl-C, so a benchmark's ``finally`` blocks
still stop its processes and delete its network namespaces."""

from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
from types import FrameType
from typing import Protocol, cast

import bench


class _Benchmark(Protocol):
    def run(self, args: list[str]) -> None: ...


def _usage(available: list[str]) -> str:
    lines = [
        "usage: python -m bench [NAME ...] [OPTIONS]",
        "Runs the named benchmarks (all of them without a name) and prints medians of repeated",
        "runs with a same-run reference; options go to each benchmark (--quick for a short run,",
        "--runs=N where supported; see docs/performance.md). Benchmarks:",
    ]
    for name in available:
        doc = importlib.import_module(f"bench.bench_{name}").__doc__ or ""
        lines.append(f"  {name:<12} {doc.strip().splitlines()[0] if doc.strip() else ''}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    available = sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name.startswith("bench_")
    )
    if "-h" in argv or "--help" in argv:
        print(_usage(available))
        return 0
    names = [arg for arg in argv if not arg.startswith("-")] or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    options = [arg for arg in argv if arg.startswith("-")]
    for name in names:
        print(f"== bench {name}", flush=True)
        module = cast(_Benchmark, importlib.import_module(f"bench.bench_{name}"))
        module.run(options)
    return 0


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(main(sys.argv[1:]))
