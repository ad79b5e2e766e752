"""A gRPC server and client (grpcio, raw-bytes messages: no generated code) for mesh tests.

    python grpc_app.py serve PORT
    python grpc_app.py call HOST PORT [basic|large|cancel]   prints one JSON object with what
                                                           came back (default: basic)

Methods of service ``meshlet.test.Echo``:

- ``Unary``: answers the request bytes reversed, with trailing metadata ``x-served-by: server``.
- ``Fail``: aborts with ``NOT_FOUND`` and details ``no such thing`` (status in trailers).
- ``Chat``: bidirectional stream; each request ``m`` is answered by ``b"echo:" + m`` as it
  arrives, and the stream ends with trailing metadata ``x-count: <n>``.
- ``Digest``: client stream; answers ``<sha256 hex> <bytes>`` of everything received.
- ``Download``: server stream of ``int(request)`` bytes (a fixed pattern) in 64 KiB messages.
- ``Forever``: server stream of one message per 10 ms until the client cancels (RST_STREAM);
  ``Cancelled`` then answers ``yes`` once the server has seen that cancellation.
- ``Slow``: answers after 2 s (for deadlines).

The client's large transfers (20 MiB each way) cross HTTP/2 flow control on every hop.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

__all__ = ["main"]

_SERVICE = "meshlet.test.Echo"
_CHUNK = 65536
_PATTERN = bytes(range(256)) * (_CHUNK // 256)
_TRANSFER = 20 * 1024 * 1024
_cancelled = threading.Event()


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


def _digest(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    digest = hashlib.sha256()
    total = 0
    for chunk in requests:
        digest.update(chunk)
        total += len(chunk)
    return f"{digest.hexdigest()} {total}".encode()


def _download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    remaining = int(request)
    while remaining:
        part = _PATTERN[: min(remaining, _CHUNK)]
        remaining -= len(part)
        yield part


def _forever(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    context.add_callback(_cancelled.set)
    count = 0
    while context.is_active():
        count += 1
        yield str(count).encode()
        time.sleep(0.01)


def _was_cancelled(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"yes" if _cancelled.wait(5) else b"no"


def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(2)
    return b"late"


def serve(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Chat": grpc.stream_stream_rpc_method_handler(_chat),
            "Digest": grpc.stream_unary_rpc_method_handler(_digest),
            "Download": grpc.unary_stream_rpc_method_handler(_download),
            "Forever": grpc.unary_stream_rpc_method_handler(_forever),
            "Cancelled": grpc.unary_unary_rpc_method_handler(_was_cancelled),
            "Slow": grpc.unary_unary_rpc_method_handler(_slow),
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


def call_large(host: str, port: int) -> dict[str, object]:
    """20 MiB up (client stream) and 20 MiB down (server stream), compared by SHA-256."""
    result: dict[str, object] = {}
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            result |= _large(channel)
        except grpc.RpcError as error:
            result["error"] = f"{error.code().name}: {error.details()}"
    return result


def call_cancel(host: str, port: int) -> dict[str, object]:
    """A cancelled server stream, then a deadline that expires."""
    result: dict[str, object] = {}
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            result |= _cancel(channel)
        except grpc.RpcError as error:
            result["error"] = f"{error.code().name}: {error.details()}"
    return result


def _large(channel: grpc.Channel) -> dict[str, object]:
    result: dict[str, object] = {}
    upload = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for index in range(_TRANSFER // _CHUNK):
            chunk = index.to_bytes(4, "big") * (_CHUNK // 4)
            upload.update(chunk)
            yield chunk

    digest = channel.stream_unary(f"/{_SERVICE}/Digest")(chunks(), timeout=10)
    result["digest_matches"] = digest.decode() == f"{upload.hexdigest()} {_TRANSFER}"
    download = hashlib.sha256()
    total = 0
    for message in channel.unary_stream(f"/{_SERVICE}/Download")(
        str(_TRANSFER).encode(), timeout=10
    ):
        download.update(message)
        total += len(message)
    expected = hashlib.sha256(_PATTERN * (_TRANSFER // _CHUNK)).hexdigest()
    result["download_matches"] = (download.hexdigest(), total) == (expected, _TRANSFER)
    return result


def _cancel(channel: grpc.Channel) -> dict[str, object]:
    result: dict[str, object] = {}
    forever = channel.unary_stream(f"/{_SERVICE}/Forever")(b"", timeout=30)
    result["forever_first"] = [next(forever).decode() for _ in range(3)]
    forever.cancel()
    result["forever_code"] = forever.code().name
    result["server_saw_cancel"] = channel.unary_unary(f"/{_SERVICE}/Cancelled")(
        b"", timeout=10
    ).decode()
    try:
        channel.unary_unary(f"/{_SERVICE}/Slow")(b"", timeout=0.3)
    except grpc.RpcError as error:
        result["slow_code"] = error.code().name
    return result


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        serve(int(argv[1]))
        return 0
    calls = {"basic": call, "large": call_large, "cancel": call_cancel}
    if len(argv) in {3, 4} and argv[0] == "call" and (len(argv) == 3 or argv[3] in calls):
        which = calls[argv[3] if len(argv) == 4 else "basic"]
        print(json.dumps(which(argv[1], int(argv[2]))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
