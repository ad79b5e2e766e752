"""The sans-IO replay rules (``proxy/h1/replay.py``): when a request whose reused upstream
connection was dead may be sent again, what counts as idempotent, the bounded copy, idle reuse.

Truth table of ``replay_decision`` (first matching row wins):

| reused | response bytes | idempotent | body kept | decision |
| --- | --- | --- | --- | --- |
| no | any | any | any | fresh_connection |
| yes | > 0 | any | any | response_started |
| yes | 0 | no | any | not_idempotent |
| yes | 0 | yes | no | body_not_kept |
| yes | 0 | yes | yes | replay |
"""

from __future__ import annotations

import pytest

from proxy.h1 import RequestHead, RequestReader
from proxy.h1.replay import (
    BODY_NOT_KEPT,
    FRESH_CONNECTION,
    NOT_IDEMPOTENT,
    NOT_REPLAYED,
    REPLAY,
    RESPONSE_STARTED,
    ReplayCopy,
    idempotent,
    replay_decision,
    reuse_idle,
)
from proxy.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("reused", "response_bytes", "is_idempotent", "kept", "expected"),
    [
        pytest.param(False, 0, True, True, FRESH_CONNECTION, id="fresh"),
        pytest.param(False, 10, False, False, FRESH_CONNECTION, id="fresh/anything"),
        pytest.param(True, 1, True, True, RESPONSE_STARTED, id="reused/one-response-byte"),
        pytest.param(True, 0, False, True, NOT_IDEMPOTENT, id="reused/post"),
        pytest.param(True, 0, False, False, NOT_IDEMPOTENT, id="reused/big-post"),
        pytest.param(True, 0, True, False, BODY_NOT_KEPT, id="reused/big-put"),
        pytest.param(True, 0, True, True, REPLAY, id="reused/small-put"),
    ],
)
def test_replay_decision_truth_table(
    reused: bool, response_bytes: int, is_idempotent: bool, kept: bool, expected: str
) -> None:
    decision = replay_decision(
        reused=reused, response_bytes=response_bytes, idempotent=is_idempotent, kept=kept
    )
    assert decision == expected
    assert decision == REPLAY or NOT_REPLAYED[decision]  # every "no" has words for the log


def _head(raw: bytes) -> RequestHead:
    reader = RequestReader()
    reader.feed(raw)
    event = reader.next_event()
    assert isinstance(event, RequestHead)
    return event


@pytest.mark.parametrize(
    ("method", "extra", "expected"),
    [
        pytest.param(b"GET", b"", True, id="GET"),
        pytest.param(b"HEAD", b"", True, id="HEAD"),
        pytest.param(b"OPTIONS", b"", True, id="OPTIONS"),
        pytest.param(b"TRACE", b"", True, id="TRACE"),
        pytest.param(b"PUT", b"", True, id="PUT"),
        pytest.param(b"DELETE", b"", True, id="DELETE"),
        pytest.param(b"POST", b"", False, id="POST"),
        pytest.param(b"PATCH", b"", False, id="PATCH"),
        pytest.param(b"POST", b'Idempotency-Key: "8e03978e"\r\n', True, id="POST+key"),
        pytest.param(b"PATCH", b"x-idempotency-key: 1\r\n", True, id="PATCH+x-key"),
        pytest.param(b"POST", b"Idempotency: 1\r\n", False, id="POST+other-field"),
    ],
)
def test_idempotent_methods_and_keys(method: bytes, extra: bytes, expected: bool) -> None:
    head = _head(method + b" /x HTTP/1.1\r\nHost: a\r\n" + extra + b"Content-Length: 0\r\n\r\n")
    assert idempotent(head) is expected
    if extra:  # the key is the application's: forwarded as received
        name = extra.split(b":")[0]
        assert name in [item[0] for item in head.fields.forwarded]


def test_the_copy_holds_head_and_body_up_to_the_limit() -> None:
    copy = ReplayCopy(b"HEAD\r\n\r\n", limit=10)
    copy.add(b"12345")
    copy.add(b"67890")  # exactly the limit: kept
    assert copy.kept
    assert copy.take() == b"HEAD\r\n\r\n1234567890"
    assert not copy.kept  # one replay only: released


def test_the_copy_is_dropped_past_the_limit_and_stays_dropped() -> None:
    copy = ReplayCopy(b"H", limit=10)
    copy.add(b"123456")
    copy.add(b"78901")  # 11 bytes of body
    assert not copy.kept
    copy.add(b"")
    assert not copy.kept
    with pytest.raises(AssertionError):
        copy.take()


def test_a_zero_limit_keeps_only_bodiless_requests() -> None:
    assert ReplayCopy(b"GET / HTTP/1.1\r\n\r\n", limit=0).kept
    copy = ReplayCopy(b"PUT / HTTP/1.1\r\n\r\n", limit=0)
    copy.add(b"x")
    assert not copy.kept


@pytest.mark.parametrize(
    ("idle", "limit", "expected"),
    [(0.0, 1.0, True), (0.999, 1.0, True), (1.0, 1.0, False), (5.0, 1.0, False), (0.0, 0.0, False)],
)
def test_idle_reuse_below_the_limit(idle: float, limit: float, expected: bool) -> None:
    assert reuse_idle(idle, limit) is expected


def test_the_settings_and_their_defaults() -> None:
    defaults = load_settings({})
    assert (defaults.http1_pool_idle_timeout, defaults.http1_replay_buffer_bytes) == (1.0, 65536)
    settings = load_settings(
        {
            "MESHLET_PROXY_HTTP1_POOL_IDLE_TIMEOUT": "250ms",
            "MESHLET_PROXY_HTTP1_REPLAY_BUFFER_BYTES": "0",
        }
    )
    assert (settings.http1_pool_idle_timeout, settings.http1_replay_buffer_bytes) == (0.25, 0)
    never = load_settings({"MESHLET_PROXY_HTTP1_POOL_IDLE_TIMEOUT": "0s"})
    assert never.http1_pool_idle_timeout == 0
    with pytest.raises(SettingsError, match="MESHLET_PROXY_HTTP1_REPLAY_BUFFER_BYTES"):
        load_settings({"MESHLET_PROXY_HTTP1_REPLAY_BUFFER_BYTES": "64k"})
