"""The ``meshlet`` command: a thin dispatcher over each component's own command module.

Each subcommand lives with its component (``meshlet inject`` in ``webhook/cli.py``, ``meshlet
identity`` in ``identity/cli.py``, ...) and exposes ``main(argv: list[str]) -> int``. Modules are
imported only when their command runs, so ``meshlet --help`` stays fast and one component's
dependencies never slow another's command.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Protocol, cast

from meshlet import __version__

__all__ = ["COMMANDS", "guard_output", "main"]


class _CommandModule(Protocol):
    def main(self, argv: list[str]) -> int: ...


# name -> (module, one-line help). Keep sorted by name.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("meshlet.check", "check that the cluster and meshlet's install are healthy"),
    "demo": ("meshlet.demo", "run meshlet's main job locally and show what it does"),
    "edges": ("meshlet.edges", "show who talks to whom, and the mTLS identities of each edge"),
    "identity": ("identity.cli", "create and inspect the mesh's trust anchor and issuer"),
    "install-files": ("meshlet.install", "write the certificates and keys the manifests need"),
    "inject": ("webhook.cli", "add meshlet to Kubernetes YAML (annotate, or --manual inline)"),
    "stat": ("meshlet.stat", "show golden metrics per workload (success, RPS, latency, TCP)"),
    "tap": ("meshlet.tap", "stream a proxy's live requests and responses"),
}

_USAGE = "usage: meshlet [--version] [--help] <command> [<args>]"
_MORE = "(run 'meshlet --help' for the list of commands)"


def _help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [_USAGE, "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in sorted(COMMANDS.items())]
    lines += ["", "Run 'meshlet <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(f"{_USAGE}\nmeshlet: error: a command is required {_MORE}", file=sys.stderr)
        return 2
    if args[0] in {"-h", "--help", "help"}:
        print(_help())
        return 0
    if args[0] in {"--version", "version"}:
        print(f"meshlet {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        what = "option" if args[0].startswith("-") else "command"
        print(f"{_USAGE}\nmeshlet: error: unknown {what} {args[0]!r} {_MORE}", file=sys.stderr)
        return 2
    module = cast(_CommandModule, importlib.import_module(command[0]))
    return guard_output(f"meshlet {args[0]}", lambda: module.main(args[1:]))


def guard_output(prog: str, run: Callable[[], int]) -> int:
    """Run a command so that its output's fate never ends in a traceback: a reader that went
    away (``meshlet inject ... | head``) stops it quietly, and an OS error such as a full disk
    under ``> out.yaml`` is one line naming the cause, exit status 1."""
    try:
        status = run()
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as error:
        _silence_stdout()
        where = f" ({error.filename})" if error.filename else ""
        print(f"{prog}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    return status


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; pointing it at /dev/null keeps that from failing too.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
