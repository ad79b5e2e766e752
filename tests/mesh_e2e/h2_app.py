"""An h2c (prior knowledge) server for a mesh pod: ``h2_app.py NAME PORT``.

``/`` answers the pod's name, with the ``meshlet-client-id`` it received as ``x-client-id``
(``tests/mesh_outbound/mo_h2backend.py``). SIGUSR1 makes every answer take 200 ms, SIGUSR2 fast
again. Prints ``ready`` once it listens.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.mesh_outbound.mo_h2backend import H2Backend

SLOW = 0.2


async def main(name: str, port: int) -> None:
    backend = H2Backend(name, "0.0.0.0", port=port)
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            print("ready", flush=True)
            async for signum in signals:
                backend.delay = SLOW if signum == signal.SIGUSR1 else 0.0


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
