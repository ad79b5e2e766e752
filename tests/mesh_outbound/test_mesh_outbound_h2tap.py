"""HTTP/2 streams are published to the tap with their method, path and scheme (curl, nginx)."""

from __future__ import annotations

import pytest

from proxy.tap import TapEnd, TapFilter, TapRequest, TapResponse
from tests.proxy.conftest import Nginx, StartProxy, curl, nginx, start_proxy

pytestmark = pytest.mark.trio
__all__ = ["nginx", "start_proxy"]  # fixtures used below


async def test_http2_stream_is_tapped(start_proxy: StartProxy, nginx: Nginx) -> None:
    proxy = await start_proxy(("127.0.0.1", nginx.h2c_port))
    subscriber = proxy.context.tap.subscribe(TapFilter())
    result = await curl("--http2-prior-knowledge", f"http://{proxy.inbound}/hello?x=1")
    assert result.returncode == 0, result.stderr
    events = subscriber.take()
    assert [type(e) for e in events] == [TapRequest, TapResponse, TapEnd]
    started, response, end = events
    assert isinstance(started, TapRequest)
    assert (started.method, started.path, started.scheme) == ("GET", "/hello?x=1", "http")
    assert started.dst == f"127.0.0.1:{nginx.h2c_port}"
    assert isinstance(response, TapResponse)
    assert response.status == 200
    assert isinstance(end, TapEnd)
    assert end.error == ""
