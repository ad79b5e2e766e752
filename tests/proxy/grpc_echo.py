"""A gRPC echo service and a client that checks it, for the proxy's tests (own processes).

``python tests/proxy/grpc_echo.py server`` prints ``PORT <n>`` and serves ``echo.Echo``:
``Unary`` echoes (trailing metadata ``x-trailer: yes``), ``Fail`` aborts with NOT_FOUND,
``Slow`` waits 5 s (cancellations are counted), ``Cancelled`` returns that count, ``Stream``
echoes every message of a bidirectional stream.

``python tests/proxy/grpc_echo.py client <host:port>`` runs the checks and prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

_cancelled = [0]
_lock = threading.Lock()


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-trailer", "yes"),))
    return request


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("unreachable")


def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    def on_done() -> None:
        if not context.is_active():
            with _lock:
                _cancelled[0] += 1

    context.add_callback(on_done)
    deadline = time.monotonic() + 5
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(0.01)
    return request


def _count(request: bytes, context: grpc.ServicerContext) -> bytes:
    return str(_cancelled[0]).encode()


def _stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    yield from requests


def serve() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow),
        "Cancelled": grpc.unary_unary_rpc_method_handler(_count),
        "Stream": grpc.stream_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def client(target: str) -> None:
    result: dict[str, object] = {}
    with grpc.insecure_channel(target) as channel:
        unary = channel.unary_unary("/echo.Echo/Unary")
        reply, call = unary.with_call(b"ping" * 1000, timeout=10)
        result["unary"] = reply == b"ping" * 1000
        result["trailer"] = dict(call.trailing_metadata()).get("x-trailer")
        try:
            channel.unary_unary("/echo.Echo/Fail")(b"", timeout=10)
        except grpc.RpcError as error:
            result["fail"] = [error.code().name, error.details()]
        messages = [bytes([i]) * 100_000 for i in range(40)]
        echoed = list(channel.stream_stream("/echo.Echo/Stream")(iter(messages), timeout=30))
        result["stream"] = echoed == messages
        try:
            channel.unary_unary("/echo.Echo/Slow")(b"", timeout=0.5)
        except grpc.RpcError as error:
            result["deadline"] = error.code().name
        time.sleep(0.5)
        result["cancelled"] = int(channel.unary_unary("/echo.Echo/Cancelled")(b"", timeout=10))
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        client(sys.argv[2])
