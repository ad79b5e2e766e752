"""A tiny TCP server (and client) that reports where each connection really arrived.

    python reporter.py serve 0.0.0.0:4143 127.0.0.1:4140 0.0.0.0:8080 [::1]:4140
    python reporter.py connect 10.96.0.10 80

``serve`` listens on every address given, prints ``ready`` once all are bound, and answers each
connection with one JSON line, then closes it:

    {"listener": 4143, "peer": "10.244.0.3:51234", "original": "10.244.0.2:8080"}

``original`` is what ``proxy.origdst.original_destination`` reports for the accepted socket,
or ``"error:<reason>"``. A connection that iptables did not redirect arrives on the
application's own listener, so ``listener`` tells redirected from direct connections apart.

``connect`` prints the server's line (or ``error:<errno name>``); tests run it as another user
(the proxy's UID 2102) to show which users' connections are redirected. Standard library and
``proxy.origdst`` only, so it starts fast in any namespace.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys

from proxy.origdst import OriginalDestinationError, original_destination


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(addresses: list[str]) -> None:
    selector = selectors.DefaultSelector()
    for text in addresses:
        host, port = _address(text.replace("[", "").replace("]", ""))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family)
        selector.register(listener, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            server = key.fileobj
            assert isinstance(server, socket.socket)
            conn, peer = server.accept()
            with conn:
                try:
                    original = _format(*original_destination(conn))
                except OriginalDestinationError as error:
                    original = f"error:{error.reason}"
                report = {
                    "listener": server.getsockname()[1],
                    "peer": _format(peer[0], peer[1]),
                    "original": original,
                }
                try:
                    conn.sendall(json.dumps(report).encode() + b"\n")
                except OSError:
                    continue


def connect(host: str, port: int) -> None:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=5) as sock:
            reply = sock.makefile("r").readline().strip()
    except OSError as exc:
        code = exc.errno if exc.errno is not None else 0
        reply = f"error:{errno.errorcode.get(code, type(exc).__name__)}"
    print(reply, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1:])
        return 0
    if len(argv) == 3 and argv[0] == "connect":
        connect(argv[1], int(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
