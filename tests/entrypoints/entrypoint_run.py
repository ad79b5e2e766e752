"""Running the real console scripts with bad input, many at once, and judging what they print.

A ``Case`` is one command line (the console script's name first) with its environment and
stdin, what exit status it must end with and what its message must name. ``run_cases`` starts
them all in a thread pool (each is a separate process, so the suite takes as long as its slowest
few, not their sum) and returns each one's ``Outcome``. ``check`` holds every case to the same
rules: the expected status, no ``Traceback``, a short message on stderr naming the problem.

Arguments may hold ``{name}`` placeholders filled from ``Inputs.paths`` (the files and ports the
session fixture made), so the tables stay readable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["BIN", "Case", "Outcome", "check", "param", "run_cases"]

BIN = Path(sys.executable).parent
# A case that is still running after this long did not refuse its input (it started serving).
_TIMEOUT_S = 25.0
# How many processes run at once: the machine has 2 cores shared with others; imports dominate.
_WORKERS = 6
# "one-line-ish": a usage line plus the error, or a short explanation, but never a dump.
_MAX_STDERR_LINES = 12
_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


@dataclass(frozen=True)
class Case:
    id: str
    argv: Sequence[str]
    status: int | tuple[int, ...]
    names: Sequence[str] = ()
    """Substrings (case-insensitive) the message must hold: the flag, variable or file, and why."""
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    where: str = "stderr"
    """Where the message goes: ``stderr``, or ``any`` for commands whose report is their output
    (``meshlet check`` prints its table, failures included, on stdout)."""
    xfail: str | None = None
    """A defect in a file another engineer owns: the case is ``xfail(strict=True)``."""
    stdout_empty: bool = False
    """Data safety: nothing at all may reach stdout (no partial output)."""
    stdout_to: str | None = None
    """A file stdout goes to instead of a pipe (``/dev/full``: every write fails with ENOSPC)."""


@dataclass(frozen=True)
class Outcome:
    status: int | None
    """``None``: still running after the timeout (killed)."""
    stdout: str
    stderr: str
    names: tuple[str, ...] = ()
    """The case's ``names`` with their placeholders filled in."""


def param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def _environment(case: Case) -> dict[str, str]:
    env = {key: os.environ[key] for key in _KEEP_ENV if key in os.environ}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(case.env)
    return env


def _run_one(case: Case, paths: Mapping[str, str]) -> Outcome:
    argv = [part.format_map(paths) for part in case.argv]
    program = shutil.which(argv[0], path=str(BIN))
    assert program is not None, f"console script {argv[0]} is not installed in {BIN}"
    env = {key: value.format_map(paths) for key, value in _environment(case).items()}
    with (
        contextlib.ExitStack() as stack,
        subprocess.Popen(
            [program, *argv[1:]],
            stdin=subprocess.PIPE,
            stdout=stack.enter_context(open(case.stdout_to, "wb"))
            if case.stdout_to
            else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=paths["tmp"],
        ) as process,
    ):
        try:
            out, err = process.communicate(case.stdin, timeout=_TIMEOUT_S)
            status: int | None = process.returncode
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            status = None
    names = tuple(name.format_map(paths) for name in case.names)
    stdout = (out or b"").decode(errors="replace")
    return Outcome(status, stdout, err.decode(errors="replace"), names)


def run_cases(cases: Iterable[Case], paths: Mapping[str, str]) -> dict[str, Outcome]:
    listed = list(cases)
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        futures = {case.id: pool.submit(_run_one, case, paths) for case in listed}
        return {name: future.result() for name, future in futures.items()}


def check(case: Case, outcome: Outcome) -> None:
    shown = f"stdout:\n{outcome.stdout[-3000:]}\nstderr:\n{outcome.stderr[-3000:]}"
    assert outcome.status is not None, f"{case.argv[0]} did not exit (it started?)\n{shown}"
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert outcome.status in expected, f"exit status {outcome.status}, not {expected}\n{shown}"
    if case.stdout_empty:
        assert outcome.stdout == "", f"partial output written\n{shown}"
    if outcome.status == 0:
        return
    message = outcome.stderr if case.where == "stderr" else outcome.stdout + outcome.stderr
    assert message.strip(), f"no message on {case.where}\n{shown}"
    if case.where == "stderr":
        lines = _without_usage(outcome.stderr.strip().splitlines())
        assert len(lines) <= _MAX_STDERR_LINES, f"{len(lines)} lines on stderr\n{shown}"
    for name in outcome.names:
        assert name.lower() in message.lower(), f"message does not name {name!r}\n{shown}"


def _without_usage(lines: list[str]) -> list[str]:
    """argparse's usage block (``usage: ...`` and its indented continuation) is its convention
    for a usage error; the message proper is what follows it."""
    if not lines or not lines[0].startswith("usage:"):
        return lines
    rest = 1
    while rest < len(lines) and lines[rest].startswith(" "):
        rest += 1
    return lines[rest:]
