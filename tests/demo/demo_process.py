"""Run ``meshlet demo`` as a user does and find what it leaves behind (namespaces by name and
by inode, processes still in one of its namespaces, its work directory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEMO = [sys.executable, "-m", "meshlet.cli", "demo"]
TRAFFIC = re.compile(r"requests/s from loadgen to web")


@dataclass
class DemoRun:
    process: subprocess.Popen[str]
    stderr_lines: list[str] = field(default_factory=list)
    namespaces: dict[str, int] = field(default_factory=dict)  # name -> inode, seen while running
    workdir: Path | None = None

    @classmethod
    def start(cls, *args: str) -> DemoRun:
        process = subprocess.Popen(
            [*DEMO, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return cls(process)

    def wait_for_traffic(self, timeout: float = 120) -> None:
        """Read stderr until the traffic starts; remember the work dir and the namespaces."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise AssertionError("demo ended early:\n" + "".join(self.stderr_lines))
            self.stderr_lines.append(line)
            if found := re.search(r"work directory (\S+)", line):
                self.workdir = Path(found.group(1))
            if TRAFFIC.search(line):
                self.namespaces = self._own_namespaces()
                return
        raise AssertionError("no traffic in time:\n" + "".join(self.stderr_lines))

    def _own_namespaces(self) -> dict[str, int]:
        prefix = f"mlt-{self.process.pid}-"
        return {
            path.name: path.stat().st_ino
            for path in Path("/run/netns").iterdir()
            if path.name.startswith(prefix)
        }

    def finish(self, timeout: float = 120) -> tuple[str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return out, "".join(self.stderr_lines) + err

    def leftovers(self) -> list[str]:
        """Everything of the run still there: namespaces (by name), processes in any of its
        namespaces (by inode, which outlives the name), the work directory."""
        found = []
        prefix = f"mlt-{self.process.pid}-"
        listed = _netns_list()
        found += [f"namespace {line}" for line in listed.splitlines() if line.startswith(prefix)]
        inodes = set(self.namespaces.values())
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                inode = (proc / "ns" / "net").stat().st_ino
            except OSError:
                continue
            if inode in inodes:
                found.append(f"process {proc.name} in one of the demo's namespaces")
        if self.workdir is not None and self.workdir.exists():
            found.append(f"work directory {self.workdir}")
        return found

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def sweep(self) -> None:
        """After a failed test: remove whatever the run left (namespaces of its PID)."""
        self.kill()
        prefix = f"mlt-{self.process.pid}-"
        listed = _netns_list()
        for line in listed.splitlines():
            if line.startswith(prefix):
                subprocess.run(["ip", "netns", "del", line.split()[0]], check=False)


def _netns_list() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
