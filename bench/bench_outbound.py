"""What the outbound mesh client adds per HTTP/1 request (``proxy/outbound.py``), in process.

One Trio process runs a minimal keep-alive HTTP/1.1 backend, the proxy's outbound listener and a
client sending sequential GETs over one keep-alive connection; each line is the median time per
request over ``--runs`` repeats of ``--number`` requests:

- reference, same run: the client straight to the backend (no proxy);
- plain: through the outbound listener without discovery (today's unmeshed path);
- mesh: through the outbound listener with the mesh client: the authority resolved (a static
  discovery view with one endpoint, so no control plane in the measurement), a per-request pick
  and ``finished``, a pooled upstream connection, route matching on a profile with one route.

Usage: ``python -m bench outbound [--runs N] [--number N]``.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
from typing import Any

import trio

from proxy.__main__ import run_proxy
from proxy.context import Lifecycle, ProxyContext
from proxy.discovery import EndpointView, ProfileView
from proxy.discovery.state import EndpointTracker, ProfileTracker
from proxy.metrics import Metrics
from proxy.outbound import Outbound
from proxy.settings import Address, ProxySettings

_AUTHORITY = "web.shop.svc.cluster.local:8080"
_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"


class _StaticDiscovery:
    """One authority, one endpoint, one profile route: discovery without a control plane."""

    def __init__(self, port: int) -> None:
        endpoints = EndpointTracker()
        endpoints.apply(
            {
                "type": "snapshot",
                "exists": True,
                "endpoints": [
                    {"address": "127.0.0.1", "port": port, "labels": {"pod": "web-0"}},
                ],
            }
        )
        profile = ProfileTracker()
        route = {"name": "GET /books", "condition": {"method": "GET", "path_regex": "/books"}}
        profile.apply({"type": "profile", "routes": [route]})
        self._endpoints = EndpointView(_AUTHORITY, endpoints)
        self._profile = ProfileView(_AUTHORITY, profile)

    async def endpoints(self, authority: str) -> EndpointView:
        return self._endpoints

    async def profile(self, authority: str) -> ProfileView:
        return self._profile

    def release(self, authority: str) -> None:
        pass


async def _backend(stream: trio.SocketStream) -> None:
    buffer = b""
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            count = buffer.count(b"\r\n\r\n")
            if count:
                buffer = buffer[buffer.rindex(b"\r\n\r\n") + 4 :]
                await stream.send_all(_RESPONSE * count)
    except trio.BrokenResourceError:
        return


async def _client(port: int, number: int) -> float:
    """Seconds per request over ``number`` sequential keep-alive GETs."""
    request = f"GET /books HTTP/1.1\r\nhost: {_AUTHORITY}\r\n\r\n".encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        started = trio.current_time()
        buffer = b""
        for _ in range(number):
            await stream.send_all(request)
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0 and len(buffer) >= head_end + 4 + 3:
                    buffer = buffer[head_end + 7 :]
                    break
                buffer += await stream.receive_some(65536)
        return (trio.current_time() - started) / number


async def _measure(runs: int, number: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"reference": [], "plain": [], "mesh": []}
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, _backend, 0))
        backend_port = listeners[0].socket.getsockname()[1]
        original = ("127.0.0.1", backend_port)
        ports: dict[str, int] = {}
        for name in ("plain", "mesh"):
            settings = ProxySettings(
                inbound_listen=Address("127.0.0.1", 0),
                outbound_listen=Address("127.0.0.1", 0),
                admin_listen=Address("127.0.0.1", 0),
            )
            outbound = None
            if name == "mesh":
                discovery = _StaticDiscovery(backend_port)
                outbound = Outbound(settings, discovery, rng=random.Random(1))
            context = ProxyContext(settings, Metrics(), Lifecycle(), outbound=outbound)
            addresses: Any = await nursery.start(
                functools.partial(
                    run_proxy, settings, resolver=lambda _s: original, context=context
                )
            )
            ports[name] = addresses.outbound[1]
        ports["reference"] = backend_port
        for _ in range(runs):
            for name, port in ports.items():
                results[name].append(await _client(port, number))
        nursery.cancel_scope.cancel()
    return {name: statistics.median(values) for name, values in results.items()}


def run(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench outbound")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--number", type=int, default=2000)
    options = parser.parse_args(args)
    medians = trio.run(_measure, options.runs, options.number)
    print(f"medians of {options.runs} runs x {options.number} sequential keep-alive GETs")
    print("| path | µs per request | added vs reference |")
    print("| --- | --- | --- |")
    reference = medians["reference"]
    for name in ("reference", "plain", "mesh"):
        value = medians[name]
        print(f"| {name} | {value * 1e6:.1f} | {(value - reference) * 1e6:+.1f} |")
