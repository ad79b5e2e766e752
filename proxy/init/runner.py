"""Running iptables: choosing the backend, reading the nat table, applying a plan.

Backend choice (``mode="auto"``): iptables-nft first (what current distributions and kubelets
use), then iptables-legacy, then plain iptables. A backend is usable when both its binary and
its ``-save`` companion exist and ``<save> -t nat`` succeeds; that first read is also the state
the plan starts from. A permission error stops the search at once: falling back would only
repeat it, and the one-line message says what is missing (the NET_ADMIN capability).

With ``--netns`` every command runs under ``nsenter --net=<path>``, so the rules land in that
namespace while this process stays where it is.

Errors are ``InitError`` with a ``reason`` slug and a one-line message for the operator.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from proxy.init.plan import Command, NatState, parse_save
from proxy.init.rules import Family

__all__ = [
    "Firewall",
    "InitError",
    "Mode",
    "apply_commands",
    "netns_path",
    "read_state",
    "select_firewall",
]

log = logging.getLogger("meshlet.proxy.init")

Mode = Literal["auto", "nft", "legacy", "plain"]
# How long one iptables command may take (it waits up to _LOCK_WAIT_S for the xtables lock).
_COMMAND_TIMEOUT_S: Final = 30.0
_LOCK_WAIT_S: Final = "5"
_PERMISSION_MARKERS: Final = ("Permission denied", "you must be root", "Operation not permitted")
_SUFFIXES: Final[dict[str, str]] = {"nft": "-nft", "legacy": "-legacy", "plain": ""}


class InitError(Exception):
    """meshlet-proxy-init could not do its job; ``str(error)`` is the one-line reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Firewall:
    """The iptables binaries to use, and the namespace they act on (``None``: our own)."""

    binary: str
    save_binary: str
    netns: str | None = None

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net={self.netns}", "--"] if self.netns else []


def netns_path(value: str) -> str:
    """A namespace given by name (``ip netns`` style) or as a path (``/proc/<pid>/ns/net``)."""
    return value if "/" in value else f"/run/netns/{value}"


def select_firewall(
    family: Family,
    mode: Mode = "auto",
    *,
    binary: str | None = None,
    save_binary: str | None = None,
    netns: str | None = None,
) -> tuple[Firewall, NatState]:
    """The first usable backend and the nat table it reports (see the module docstring)."""
    if binary is not None:
        chosen = Firewall(binary, save_binary or f"{binary}-save", netns)
        return chosen, read_state(chosen)
    base = "iptables" if family == "ipv4" else "ip6tables"
    modes: Sequence[str] = ("nft", "legacy", "plain") if mode == "auto" else (mode,)
    failures: list[str] = []
    for name in modes:
        suffix = _SUFFIXES[name]
        candidate = Firewall(f"{base}{suffix}", f"{base}{suffix}-save", netns)
        try:
            return candidate, read_state(candidate)
        except InitError as error:
            if error.reason == "permission_denied" or mode != "auto":
                raise
            failures.append(str(error))
            log.debug("backend %s unusable: %s", name, error)
    raise InitError("no_backend", "no usable iptables backend: " + "; ".join(failures))


def read_state(firewall: Firewall) -> NatState:
    """The nat table as ``<save> -t nat`` reports it."""
    output = _run(firewall, [firewall.save_binary, "-t", "nat"])
    try:
        return parse_save(output)
    except ValueError as exc:
        raise InitError("unreadable_state", f"{firewall.save_binary}: {exc}") from None


def apply_commands(firewall: Firewall, commands: Sequence[Command]) -> None:
    """Run each command as ``<iptables> -w 5 -t nat <command>``, stopping at the first error."""
    for command in commands:
        log.debug("running %s -t nat %s", firewall.binary, " ".join(command))
        _run(firewall, [firewall.binary, "-w", _LOCK_WAIT_S, "-t", "nat", *command])


def _run(firewall: Firewall, argv: list[str]) -> str:
    program = argv[0]
    if shutil.which(program) is None:
        raise InitError(
            "binary_not_found",
            f"{program}: not found (install iptables or pass --firewall-bin-path)",
        )
    full = [*firewall.prefix(), *argv]
    if firewall.netns and shutil.which("nsenter") is None:
        raise InitError("binary_not_found", "nsenter: not found (needed for --netns)")
    try:
        done = subprocess.run(
            full, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise InitError(
            "timeout", f"{program}: no answer within {_COMMAND_TIMEOUT_S:.0f}s"
        ) from None
    except OSError as exc:
        raise InitError("exec_failed", f"{program}: cannot run: {exc.strerror}") from None
    if done.returncode == 0:
        return done.stdout
    detail = _last_line(done.stderr) or f"exit status {done.returncode}"
    if "xtables.lock" in done.stderr:
        raise InitError(
            "lock_unavailable",
            f"{program}: cannot open the xtables lock file: /run must be writable by this user "
            f"(mount an emptyDir there) ({detail})",
        )
    if any(marker in done.stderr for marker in _PERMISSION_MARKERS):
        raise InitError(
            "permission_denied",
            f"{program}: permission denied: meshlet-proxy-init needs the NET_ADMIN capability "
            f"(and NET_RAW for iptables-legacy) in the pod's network namespace ({detail})",
        )
    shown = " ".join(argv[1:])
    raise InitError("command_failed", f"{program} {shown}: {detail}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # iptables-nft-save warns about legacy tables on stderr even on success; the cause of a
    # failure is the last line.
    return lines[-1] if lines else ""
