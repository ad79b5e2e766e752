"""The admin server: the pure routing table, and the endpoints served to a real curl."""

from __future__ import annotations

import pytest
import trio

from proxy.admin import answer
from tests.proxy.conftest import StartProxy, curl

ROUTES = [
    # method, path, loopback, ready, enabled -> status
    pytest.param(b"GET", b"/live", True, False, False, 200, id="live"),
    pytest.param(b"GET", b"/ready", True, True, False, 200, id="ready"),
    pytest.param(b"GET", b"/ready", True, False, False, 503, id="not-ready"),
    pytest.param(b"GET", b"/metrics?x=1", False, True, False, 200, id="metrics-query"),
    pytest.param(b"POST", b"/live", True, True, False, 405, id="live-post"),
    pytest.param(b"POST", b"/shutdown", True, True, False, 404, id="shutdown-disabled"),
    pytest.param(b"POST", b"/shutdown", False, True, True, 403, id="shutdown-remote"),
    pytest.param(b"GET", b"/shutdown", True, True, True, 405, id="shutdown-get"),
    pytest.param(b"POST", b"/shutdown", True, True, True, 200, id="shutdown-ok"),
    pytest.param(b"GET", b"/nope", True, True, True, 404, id="unknown"),
]


@pytest.mark.parametrize(("method", "path", "loopback", "ready", "enabled", "status"), ROUTES)
def test_answer(  # noqa: PLR0917 (one parameter per table column)
    method: bytes, path: bytes, loopback: bool, ready: bool, enabled: bool, status: int
) -> None:
    reply = answer(method, path, peer_loopback=loopback, ready=ready, shutdown_enabled=enabled)
    assert reply.status == status
    assert reply.shutdown == (status == 200 and path == b"/shutdown")


@pytest.mark.trio
async def test_endpoints_over_http(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(("127.0.0.1", 9), shutdown_endpoint_enabled=False)
    live = await curl("-i", f"http://{proxy.admin}/live")
    assert live.stdout.startswith(b"HTTP/1.1 200 ")
    assert live.stdout.endswith(b"live\n")
    ready = await curl("-i", f"http://{proxy.admin}/ready")
    assert ready.stdout.startswith(b"HTTP/1.1 200 ")
    assert ready.stdout.endswith(b"ready\n")
    metrics = await curl("-i", f"http://{proxy.admin}/metrics")
    assert b"content-type: text/plain; version=0.0.4" in metrics.stdout
    assert b"# TYPE response_latency_ms histogram" in metrics.stdout
    shutdown = await curl("-i", "-X", "POST", f"http://{proxy.admin}/shutdown")
    assert shutdown.stdout.startswith(b"HTTP/1.1 404 ")
    assert not proxy.context.lifecycle.draining.is_set()


@pytest.mark.trio
async def test_shutdown_endpoint_drains(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        ("127.0.0.1", 9), shutdown_endpoint_enabled=True, shutdown_grace_period=5.0
    )
    shutdown = await curl("-i", "-X", "POST", f"http://{proxy.admin}/shutdown")
    assert shutdown.stdout.startswith(b"HTTP/1.1 200 ")
    with trio.fail_after(5):
        await proxy.context.lifecycle.draining.wait()
    assert not proxy.context.lifecycle.ready
