"""The tap server's pure decision: who may tap, and what the query string asks for."""

from __future__ import annotations

import pytest

from proxy.settings import Address, ProxySettings, SettingsError
from proxy.tap import TapFilter
from proxy.tapserver import TapQuery, TapRefusal, TapSettings, decide, load_tap_settings

DECISIONS = [
    # method, target, loopback -> status (200 = a TapQuery)
    pytest.param(b"GET", b"/tap", True, 200, id="plain"),
    pytest.param(b"GET", b"/tap", False, 403, id="not-loopback"),
    pytest.param(b"GET", b"/nope", False, 403, id="not-loopback-first"),
    pytest.param(b"GET", b"/tapx", True, 404, id="unknown-path"),
    pytest.param(b"POST", b"/tap", True, 405, id="post"),
    pytest.param(b"GET", b"/tap?direction=sideways", True, 400, id="bad-direction"),
    pytest.param(b"GET", b"/tap?path=api", True, 400, id="relative-path"),
    pytest.param(b"GET", b"/tap?method=G%20T", True, 400, id="bad-method"),
    pytest.param(b"GET", b"/tap?status=200", True, 400, id="status-not-class"),
    pytest.param(b"GET", b"/tap?max_rps=0", True, 400, id="zero-rps"),
    pytest.param(b"GET", b"/tap?max_rps=nan", True, 400, id="nan-rps"),
    pytest.param(b"GET", b"/tap?max_rps=1e9", True, 400, id="huge-rps"),
    pytest.param(b"GET", b"/tap?max_rps=fast", True, 400, id="word-rps"),
    pytest.param(b"GET", b"/tap?colour=red", True, 400, id="unknown-parameter"),
    pytest.param(b"GET", b"/tap?method=GET&method=PUT", True, 400, id="twice"),
    pytest.param(b"GET", b"/tap?method=", True, 400, id="empty-value"),
    pytest.param(b"GET", b"/tap?path=/" + b"a" * 2000, True, 400, id="too-long"),
    pytest.param(b"GET", b"/tap?path=/\xff", True, 400, id="not-ascii"),
    pytest.param(b"GET", b"/tap?junk", True, 400, id="malformed"),
]


@pytest.mark.parametrize(("method", "target", "loopback", "status"), DECISIONS)
def test_decide(method: bytes, target: bytes, loopback: bool, status: int) -> None:
    decision = decide(method, target, peer_loopback=loopback)
    if status == 200:
        assert isinstance(decision, TapQuery)
    else:
        assert isinstance(decision, TapRefusal)
        assert decision.status == status
        assert decision.message


def test_every_filter_parameter() -> None:
    target = (
        b"/tap?direction=outbound&authority=Web.NS.svc:8080&path=%2Fapi%2Fv1"
        b"&method=post&status=5XX&max_rps=2.5"
    )
    decision = decide(b"GET", target, peer_loopback=True)
    assert decision == TapQuery(
        TapFilter(
            direction="outbound",
            authority=b"web.ns.svc:8080",
            path_prefix=b"/api/v1",
            method=b"POST",
            status_class=5,
        ),
        2.5,
    )


def test_defaults() -> None:
    assert decide(b"GET", b"/tap", peer_loopback=True) == TapQuery(TapFilter(), 100.0)


def test_tap_settings_from_proxy_settings() -> None:
    assert load_tap_settings(ProxySettings()).listen == Address("0.0.0.0", 4190)
    custom = ProxySettings(extra={"TAP_LISTEN_ADDR": "127.0.0.1:14190"})
    assert load_tap_settings(custom) == TapSettings(listen=Address("127.0.0.1", 14190))
    with pytest.raises(SettingsError, match="MESHLET_PROXY_TAP_LISTEN_ADDR"):
        load_tap_settings(ProxySettings(extra={"TAP_LISTEN_ADDR": "localhost:1"}))


WEB = "web.shop.serviceaccount.identity.meshlet.cluster.local"
ADMIN = "admin.kube-system.serviceaccount.identity.meshlet.cluster.local"
AUTHORIZED = frozenset({WEB})


@pytest.mark.parametrize(
    ("loopback", "client_id", "status"),
    [
        pytest.param(False, WEB, 200, id="remote/authorized"),
        pytest.param(True, WEB, 200, id="loopback/authorized"),
        pytest.param(False, ADMIN, 403, id="remote/other-identity"),
        pytest.param(True, ADMIN, 403, id="loopback/other-identity"),
        pytest.param(False, None, 403, id="remote/no-identity"),
        pytest.param(True, None, 200, id="loopback/no-identity"),
    ],
)
def test_decide_by_identity(loopback: bool, client_id: str | None, status: int) -> None:
    decision = decide(
        b"GET", b"/tap", peer_loopback=loopback, client_id=client_id, authorized=AUTHORIZED
    )
    if status == 200:
        assert isinstance(decision, TapQuery)
    else:
        assert isinstance(decision, TapRefusal)
        assert decision.status == status
        if client_id is not None:
            assert decision.message.startswith(f"{client_id} is not authorized")


def test_authorized_identities_setting() -> None:
    extra = {"TAP_AUTHORIZED_IDENTITIES": f" {WEB.upper()}, {ADMIN} ,"}
    loaded = load_tap_settings(ProxySettings(extra=extra))
    assert loaded.authorized_identities == frozenset({WEB, ADMIN})
    assert load_tap_settings(ProxySettings()).authorized_identities == frozenset()
    for bad in ("web shop", "-web.shop", "a" * 300, "web_shop.x"):
        with pytest.raises(SettingsError, match=r"^MESHLET_PROXY_TAP_AUTHORIZED_IDENTITIES: "):
            load_tap_settings(ProxySettings(extra={"TAP_AUTHORIZED_IDENTITIES": bad}))
