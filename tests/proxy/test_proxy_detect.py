"""Protocol detection, prefix by prefix (sans-IO: bytes in, a verdict out)."""

from __future__ import annotations

import pytest

from proxy.detect import HTTP2_PREFACE, MAX_PREFIX, Protocol, detect

CLIENT_HELLO = bytes.fromhex("160301020001") + b"\x00" * 20


@pytest.mark.parametrize(
    ("prefix", "verdict"),
    [
        pytest.param(b"", None, id="nothing-yet"),
        pytest.param(HTTP2_PREFACE, Protocol.HTTP2, id="h2-preface"),
        pytest.param(HTTP2_PREFACE + b"\x00\x00\x12\x04", Protocol.HTTP2, id="h2-preface+frame"),
        pytest.param(HTTP2_PREFACE[:10], None, id="h2-preface-partial"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n", Protocol.HTTP1, id="http1-get"),
        pytest.param(b"POST /x?y=1 HTTP/1.0\n", Protocol.HTTP1, id="http1.0-bare-lf"),
        pytest.param(b"GET /index.html HTT", None, id="http1-partial"),
        pytest.param(b"GET", None, id="method-only"),
        pytest.param(b"GET / HTTP/2.0\r\n", Protocol.OPAQUE, id="not-http1-version"),
        pytest.param(b"GET  / HTTP/1.1\r\n", Protocol.OPAQUE, id="double-space"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", Protocol.OPAQUE, id="ssh-banner"),
        pytest.param(b"\x00\x01\x02", Protocol.OPAQUE, id="binary"),
        pytest.param(CLIENT_HELLO, Protocol.TLS, id="tls-client-hello"),
        pytest.param(CLIENT_HELLO[:3], None, id="tls-partial"),
        pytest.param(bytes.fromhex("160301020002"), Protocol.OPAQUE, id="tls-server-hello"),
        pytest.param(bytes.fromhex("1605"), Protocol.OPAQUE, id="not-tls-version"),
        pytest.param(b"*3\r\n$3\r\nSET\r\n", Protocol.OPAQUE, id="redis"),
    ],
)
def test_detect(prefix: bytes, verdict: Protocol | None) -> None:
    assert detect(prefix) is verdict


def test_an_endless_request_line_is_opaque() -> None:
    assert detect(b"GET /" + b"a" * MAX_PREFIX) is Protocol.OPAQUE
    assert detect(b"GET /" + b"a" * 100) is None
