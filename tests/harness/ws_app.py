"""A WebSocket echo server (the ``websockets`` library) for mesh tests.

    python ws_app.py PORT

Echoes every text or binary message back; prints ``ready`` once listening on 0.0.0.0:PORT.
"""

from __future__ import annotations

import sys

from websockets.sync.server import ServerConnection, serve


def _echo(connection: ServerConnection) -> None:
    for message in connection:
        connection.send(message)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with serve(_echo, "0.0.0.0", int(argv[0])) as server:
        print("ready", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
