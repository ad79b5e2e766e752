"""A gRPC server and client (grpcio, raw-bytes messages: no generated code) for mesh tests.

    python grpc_app.py serve PORT
    python grpc_app.py call HOST PORT      prints one JSON object with what came back

Methods of service ``meshlet.test.Echo``:

- ``Unary``: answers the request bytes reversed, with trailing metadata ``x-served-by: server``.
- ``Fail``: aborts with ``NOT_FOUND`` and details ``no such thing`` (status in trailers).
- ``Chat``: bidirectional stream; each request ``m`` is answered by ``b"echo:" + m`` as it
  arrives, and the stream ends with trailing metadata ``x-count: <n>``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc

_SERVICE = "meshlet.test.Echo"


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-served-by", "server"),))
    return request[::-1]


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("abort returns by raising")


def _chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    count = 0
    for message in requests:
        count += 1
        yield b"echo:" + message
    context.set_trailing_metadata((("x-count", str(count)),))


def serve(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Chat": grpc.stream_stream_rpc_method_handler(_chat),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(host: str, port: int) -> dict[str, object]:
    result: dict[str, object] = {}
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        unary = channel.unary_unary(f"/{_SERVICE}/Unary")
        reply, info = unary.with_call(b"hello mesh", timeout=10)
        result["unary"] = reply.decode()
        result["unary_code"] = info.code().name
        result["unary_trailers"] = dict(info.trailing_metadata() or ())
        fail = channel.unary_unary(f"/{_SERVICE}/Fail")
        try:
            fail(b"x", timeout=10)
        except grpc.RpcError as error:
            result["fail_code"] = error.code().name
            result["fail_details"] = error.details()
        chat = channel.stream_stream(f"/{_SERVICE}/Chat")
        messages = (f"m{i}".encode() for i in range(100))
        stream = chat(messages, timeout=30)
        result["chat"] = [reply.decode() for reply in stream]
        result["chat_code"] = stream.code().name
        result["chat_trailers"] = dict(stream.trailing_metadata() or ())
    return result


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        serve(int(argv[1]))
        return 0
    if len(argv) == 3 and argv[0] == "call":
        print(json.dumps(call(argv[1], int(argv[2]))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
