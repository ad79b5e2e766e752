"""A tap server with synthetic traffic, for tests that need it in another network namespace.

python tests/tap/tap_app.py HOST    serve the tap on HOST:<free port>, print "PORT <n>",
                                    then publish one exchange every 20 ms until terminated
python tests/tap/tap_app.py HOST CERT KEY ANCHORS AUTHORIZED
                                    the same, also serving mTLS clients with this server
                                    certificate (client certificates optional, as the proxy's
                                    ``IdentityClient.tap_server_context``), authorizing the
                                    comma-separated identities AUTHORIZED
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import trio

from proxy.identity.tls import server_context
from proxy.settings import Address
from proxy.tap import TapHub
from proxy.tapserver import TapSettings, TapTlsContext, parse_identities, serve_tap


async def main(host: str, *tls: str) -> None:
    hub = TapHub()
    settings = TapSettings(listen=Address(host, 0))
    tls_context: TapTlsContext | None = None
    if tls:
        cert, key, anchors, authorized = tls
        context = server_context(Path(anchors).read_text(), Path(cert), Path(key))
        context.verify_mode = ssl.CERT_OPTIONAL
        settings = TapSettings(
            listen=Address(host, 0), authorized_identities=parse_identities(authorized)
        )

        def tls_context() -> ssl.SSLContext:
            return context

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(
            lambda task_status: serve_tap(
                hub, settings, tls_context=tls_context, task_status=task_status
            )
        )
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
    trio.run(main, *sys.argv[1:])
