"""HTTP/1.1 through the proxy with a real curl and a real backend process."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
import trio

from tests.proxy.conftest import StartProxy, curl

pytestmark = pytest.mark.trio

_PERIOD = bytes(range(256))


def _pattern(size: int) -> bytes:
    return (_PERIOD * (size // 256 + 1))[:size]


async def test_keep_alive_reuses_one_client_connection(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    url = f"http://{proxy.inbound}/bytes/100000"
    result = await curl("-v", "-o", "/dev/null", "-o", "/dev/null", url, url)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(b"< HTTP/1.1 200") == 2
    assert result.stderr.count(b"Connected to") == 1


@pytest.mark.parametrize("framing", ["bytes", "chunked"])
async def test_response_bodies_arrive_intact(
    start_proxy: StartProxy, http1_backend: int, framing: str
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    result = await curl(f"http://{proxy.inbound}/{framing}/300000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == _pattern(300000)


async def test_chunked_upload_compared_by_hash(
    start_proxy: StartProxy, http1_backend: int, tmp_path: Path
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    body = os.urandom(1 << 20) * 20  # 20 MiB
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    result = await curl(
        "-H", "Transfer-Encoding: chunked", "-H", "Expect:",
        "--data-binary", f"@{upload}", f"http://{proxy.inbound}/sha256",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [hashlib.sha256(body).hexdigest(), str(len(body))]


async def test_expect_100_continue_is_relayed(
    start_proxy: StartProxy, http1_backend: int, tmp_path: Path
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    body = os.urandom(200_000)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    result = await curl(
        "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "15",
        "--data-binary", f"@{upload}", f"http://{proxy.inbound}/sha256",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"< HTTP/1.1 100 Continue" in result.stderr
    assert result.stdout.decode().split() == [hashlib.sha256(body).hexdigest(), str(len(body))]


async def test_hop_by_hop_headers_are_not_forwarded(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    result = await curl(
        "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: secret", "-H", "Keep-Alive: 5",
        "-H", "TE: trailers", "-H", "X-End-To-End: kept", f"http://{proxy.inbound}/headers",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    received = result.stdout.decode()
    assert "x-end-to-end: kept" in received
    for name in ("x-hop", "keep-alive", "te:", "connection"):
        assert name not in received


async def test_refused_upstream_gives_502_naming_the_cause(start_proxy: StartProxy) -> None:
    with socket.socket() as placeholder:  # a port that nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    proxy = await start_proxy(("127.0.0.1", port))
    result = await curl("-i", f"http://{proxy.inbound}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/1.1 502 ")
    assert b"meshlet-proxy-error: upstream_connect_refused" in result.stdout


async def test_connect_timeout_gives_504(start_proxy: StartProxy) -> None:
    # A listener with a full accept queue drops further SYNs: the connect hangs.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        await trio.sleep(0.2)
        try:
            proxy = await start_proxy(full.getsockname(), inbound_connect_timeout=0.3)
            result = await curl("-i", f"http://{proxy.inbound}/")
        finally:
            for filler in fillers:
                filler.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/1.1 504 ")
    assert b"meshlet-proxy-error: upstream_connect_timeout" in result.stdout


async def test_malformed_request_gets_400(start_proxy: StartProxy, http1_backend: int) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"meshlet-proxy-error: malformed_request" in answer


async def test_upstream_reset_mid_body_is_not_a_clean_response(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    result = await curl("-o", "/dev/null", f"http://{proxy.inbound}/reset")
    assert result.returncode in {18, 56}, result  # partial file / failure receiving data
    # The proxy keeps serving others.
    assert (await curl(f"http://{proxy.inbound}/")).stdout == b"hello from the backend\n"


async def test_metrics_count_requests_and_bytes(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    for _ in range(3):
        assert (await curl(f"http://{proxy.inbound}/status/503")).returncode == 0
    text = (await curl(f"http://{proxy.admin}/metrics")).stdout.decode()
    authority = f'authority="{proxy.inbound}"'
    assert f'request_total{{direction="inbound",{authority},' in text
    lines = [line for line in text.splitlines() if line.startswith("response_total{")]
    assert any(
        'status_code="503"' in line and 'classification="failure"' in line and line.endswith(" 3")
        for line in lines
    ), lines
    assert 'response_latency_ms_bucket{direction="inbound"' in text
    assert 'tcp_open_total{direction="inbound",peer="src"' in text
    assert 'tls="no_identity",no_tls_reason="disabled"' in text


async def test_outbound_listener_forwards_to_the_original_destination(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    result = await curl(f"http://127.0.0.1:{proxy.addresses.outbound[1]}/")
    assert result.stdout == b"hello from the backend\n"
    text = proxy.context.metrics.render().decode()
    assert 'request_total{direction="outbound"' in text
    assert (
        f'tcp_open_total{{direction="outbound",peer="dst",target_addr="127.0.0.1:{http1_backend}"'
        in text
    )


async def test_upstream_closing_an_idle_connection_is_not_an_error(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    base = f"http://{proxy.inbound}"
    result = await curl("-w", "%{http_code}\n", f"{base}/quiet-close", f"{base}/")
    await trio.sleep(0)
    assert result.stdout == b"closing quietly\n200\nhello from the backend\n200\n", result


async def test_drain_closes_idle_keep_alive_connections(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    proxy = await start_proxy(("127.0.0.1", http1_backend))
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.addresses.inbound[1])
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while not answer.endswith(b"hello from the backend\n"):
                answer += await stream.receive_some(4096)
            proxy.context.lifecycle.drain()
            assert await stream.receive_some(4096) == b""  # closed, not left hanging
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_outbound_endpoints_come_from_the_picker(
    start_proxy: StartProxy, http1_backend: int
) -> None:
    """The seam discovery will use: the picker, not the original destination, decides."""
    asked: list[tuple[str, int]] = []

    class ToBackend:
        async def pick(self, original: tuple[str, int]) -> tuple[str, int]:
            asked.append(original)
            return ("127.0.0.1", http1_backend)

    proxy = await start_proxy(("192.0.2.10", 80), picker=ToBackend())  # TEST-NET: never dialled
    result = await curl(f"http://127.0.0.1:{proxy.addresses.outbound[1]}/")
    assert result.stdout == b"hello from the backend\n"
    assert asked == [("192.0.2.10", 80)]
