"""meshlet's benchmarks: ``tox -e bench`` (or ``python -m bench [name ...]``).

Each ``bench/bench_<name>.py`` module defines ``run(args: list[str]) -> None`` which prints its
figures (medians of repeated runs, with a reference measured in the same run). The figures and
the command that produced them are recorded in docs/performance.md.
"""
