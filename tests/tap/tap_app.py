"""A tap server with synthetic traffic, for tests that need it in another network namespace.

python tests/tap/tap_app.py HOST    serve the tap on HOST:<free port>, print "PORT <n>",
                                    then publish one exchange every 20 ms until terminated
"""

from __future__ import annotations

import sys

import trio

from proxy.settings import Address
from proxy.tap import TapHub
from proxy.tapserver import TapSettings, serve_tap


async def main(host: str) -> None:
    hub = TapHub()
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_tap, hub, TapSettings(listen=Address(host, 0)))
        print(f"PORT {port}", flush=True)
        stream = 0
        while True:
            stream += 1
            tapped = hub.request_start(
                conn=0,
                stream=stream,
                direction="inbound",
                method=b"GET",
                authority=b"app:80",
                path=b"/synthetic",
                src=("10.254.90.2", 40000),
                dst=("127.0.0.1", 80),
            )
            if tapped is not None:
                tapped.response_start(200)
                tapped.end(response_bytes=2)
            await trio.sleep(0.02)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
