"""The proxy client's sans-IO parts, and its renewal loop on a fake clock."""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from identity.ca import sign_leaf
from identity.csr import check_csr
from meshlet.names import workload_identity
from proxy.identity import (
    CertifyRefused,
    IdentityClient,
    IdentityClientSettings,
    IdentitySettingsError,
    InvalidAnswer,
    TransportError,
    refresh_delay,
)
from proxy.identity.keywork import run_in_process
from proxy.identity.protocol import CertifyExchange, accept_answer, build_csr

from .pki import NOW, as_issuer, make_ca, pem

WEB = workload_identity("web", "shop")
H = datetime.timedelta(hours=1)


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        pytest.param(24 * 3600, 0.7 * 24 * 3600, id="24h-leaf"),
        pytest.param(100, 70, id="100s"),
        pytest.param(5, 10, id="clamped-to-10s"),
        pytest.param(-30, 10, id="already-expired"),
        pytest.param(10 * 24 * 3600, 24 * 3600, id="clamped-to-24h"),
    ],
)
def test_refresh_delay(remaining: float, expected: float) -> None:
    valid_until = NOW + datetime.timedelta(seconds=remaining)
    assert refresh_delay(now=NOW, valid_until=valid_until) == pytest.approx(expected)


def test_csr_passes_the_service_checks() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert check_csr(build_csr(key, WEB).encode(), WEB).ok


def _answer(leaf: x509.Certificate, chain: list[x509.Certificate]) -> bytes:
    return json.dumps(
        {
            "leaf_certificate": pem(leaf).decode(),
            "intermediate_certificates": [pem(c).decode() for c in chain],
            "valid_until": leaf.not_valid_after_utc.isoformat(),
        }
    ).encode()


def test_accept_answer_checks_name_key_and_chain() -> None:
    anchor, issuer = make_ca()
    signer = as_issuer(anchor, issuer)
    key = ec.generate_private_key(ec.SECP256R1())
    anchors = [anchor.certificate]
    good = sign_leaf(signer, key.public_key(), WEB, now=NOW)
    got = accept_answer(
        200, _answer(good, [issuer.certificate]), key=key, identity=WEB, anchors=anchors
    )
    assert got.valid_until == good.not_valid_after_utc
    other_name = sign_leaf(signer, key.public_key(), workload_identity("db", "shop"), now=NOW)
    with pytest.raises(InvalidAnswer, match="not for web"):
        accept_answer(
            200, _answer(other_name, [issuer.certificate]), key=key, identity=WEB, anchors=anchors
        )
    other_key = sign_leaf(
        signer, ec.generate_private_key(ec.SECP256R1()).public_key(), WEB, now=NOW
    )
    with pytest.raises(InvalidAnswer, match="our key"):
        accept_answer(
            200, _answer(other_key, [issuer.certificate]), key=key, identity=WEB, anchors=anchors
        )
    foreign_anchor, _ = make_ca()
    with pytest.raises(InvalidAnswer, match="chain"):
        accept_answer(
            200,
            _answer(good, [issuer.certificate]),
            key=key,
            identity=WEB,
            anchors=[foreign_anchor.certificate],
        )
    with pytest.raises(InvalidAnswer, match="chain"):
        accept_answer(200, _answer(good, []), key=key, identity=WEB, anchors=anchors)
    for garbage in (b"", b"[]", b'{"leaf_certificate": 5}', b'{"leaf_certificate": "x"}'):
        with pytest.raises(InvalidAnswer):
            accept_answer(200, garbage, key=key, identity=WEB, anchors=anchors)
    refusal = json.dumps({"reason": "identity_mismatch", "message": "no"}).encode()
    with pytest.raises(CertifyRefused) as refused:
        accept_answer(403, refusal, key=key, identity=WEB, anchors=anchors)
    assert (refused.value.status, refused.value.reason) == (403, "identity_mismatch")
    with pytest.raises(CertifyRefused, match="HTTP 502 unknown"):
        accept_answer(502, b"<html>", key=key, identity=WEB, anchors=anchors)


def _server_bytes(status: int, body: bytes, *, chunked: bool = False) -> bytes:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"POST /v1/certify HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    server.next_event()
    server.next_event()
    headers = (
        [("Transfer-Encoding", "chunked")] if chunked else [("Content-Length", str(len(body)))]
    )
    data = server.send(h11.Response(status_code=status, headers=headers)) or b""
    data += server.send(h11.Data(data=body)) or b""
    return data + (server.send(h11.EndOfMessage()) or b"")


def _exchange(max_body: int = 1000) -> CertifyExchange:
    return CertifyExchange(
        host="svc", identity=WEB, csr_pem="CSR", token="secret", max_body=max_body
    )


def test_exchange_request_and_byte_by_byte_response() -> None:
    exchange = _exchange()
    request = exchange.request_bytes()
    assert request.startswith(b"POST /v1/certify HTTP/1.1\r\n")
    assert b"Authorization: Bearer secret\r\n" in request
    assert json.loads(request.split(b"\r\n\r\n", 1)[1]) == {"identity": WEB, "csr": "CSR"}
    wire = _server_bytes(200, b'{"ok": true}', chunked=True)
    answers = [exchange.receive_data(wire[i : i + 1]) for i in range(len(wire))]
    assert answers[-1] == (200, b'{"ok": true}')
    assert all(answer is None for answer in answers[:-1])


def test_exchange_errors() -> None:
    exchange = _exchange()
    exchange.request_bytes()
    exchange.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial")
    with pytest.raises(TransportError, match="closed connection without sending complete"):
        exchange.receive_data(b"")
    exchange = _exchange(max_body=10)
    exchange.request_bytes()
    with pytest.raises(TransportError, match="too large"):
        exchange.receive_data(_server_bytes(200, b"x" * 100))
    exchange = _exchange()
    exchange.request_bytes()
    with pytest.raises(TransportError, match="bad HTTP"):
        exchange.receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_settings_from_env(tmp_path: Path) -> None:
    anchor, _ = make_ca()
    env = {
        "MESHLET_PROXY_IDENTITY_TRUST_ANCHORS": pem(anchor.certificate).decode(),
        "MESHLET_PROXY_IDENTITY_LOCAL_NAME": WEB,
        "MESHLET_PROXY_IDENTITY_DIR": str(tmp_path),
        "MESHLET_PROXY_IDENTITY_SVC_ADDR": "identity.example:9443",
    }
    settings = IdentityClientSettings.from_env(env)
    assert (settings.svc_host, settings.svc_port, settings.identity_dir) == (
        "identity.example",
        9443,
        tmp_path,
    )
    assert (
        settings.svc_name
        == "meshlet-identity.meshlet.serviceaccount.identity.meshlet.cluster.local"
    )
    assert settings.token_file == Path("/var/run/secrets/tokens/meshlet-identity-token")
    with pytest.raises(IdentitySettingsError, match="TRUST_ANCHORS"):
        IdentityClientSettings.from_env({**env, "MESHLET_PROXY_IDENTITY_TRUST_ANCHORS": "junk"})
    with pytest.raises(IdentitySettingsError, match="LOCAL_NAME"):
        IdentityClientSettings.from_env({**env, "MESHLET_PROXY_IDENTITY_LOCAL_NAME": ""})
    with pytest.raises(IdentitySettingsError, match="SVC_ADDR"):
        IdentityClientSettings.from_env({**env, "MESHLET_PROXY_IDENTITY_SVC_ADDR": "nope"})


@pytest.mark.trio
async def test_renewal_schedule_and_backoff_on_a_fake_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Leaves live 100 s: renewals every 70 s; three failures back off 1, 2, 4 s (with jitter)."""
    anchor, issuer = make_ca()
    signer = as_issuer(anchor, issuer)
    start = NOW.timestamp()
    calls: list[float] = []
    failures_left = [3]
    token_file = tmp_path / "token"
    token_file.write_text("t\n")

    def wall_clock() -> float:
        return start + trio.current_time()

    async def transport(
        settings: IdentityClientSettings, csr_pem: str, token: str
    ) -> tuple[int, bytes]:
        calls.append(trio.current_time())
        assert token == "t"
        if failures_left[0]:
            failures_left[0] -= 1
            raise TransportError("connection refused")
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        now = datetime.datetime.fromtimestamp(wall_clock(), datetime.UTC)
        leaf = sign_leaf(
            signer, csr.public_key(), WEB, now=now,  # type: ignore[arg-type]
            lifetime=datetime.timedelta(seconds=100), clock_skew=datetime.timedelta(0),
        )  # fmt: skip
        return 200, _answer(leaf, [issuer.certificate])

    settings = IdentityClientSettings(
        identity_dir=tmp_path / "ee",
        token_file=token_file,
        trust_anchors_pem=pem(anchor.certificate).decode(),
        local_name=WEB,
        backoff_min=1.0,
        backoff_max=4.0,
    )
    client = IdentityClient(
        settings, transport=transport, wall_clock=wall_clock, keywork=run_in_process
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await trio.sleep(0.01)
        assert not client.is_ready
        await client.ready.wait()
        first_ready = trio.current_time()
        await trio.sleep(250)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert 0.5 <= gaps[0] <= 1.0
    assert 1.0 <= gaps[1] <= 2.0
    assert 2.0 <= gaps[2] <= 4.0
    assert first_ready == calls[3]
    # X.509 times have whole seconds, so each renewal lands within a second of 70 s.
    assert gaps[3:] == pytest.approx([70.0, 70.0, 70.0], abs=1.0)
    assert client.renewals == 4
    assert client.failures == 3


def test_token_file_must_exist_when_named(tmp_path: Path) -> None:
    anchor, _ = make_ca()
    env = {
        "MESHLET_PROXY_IDENTITY_TRUST_ANCHORS": pem(anchor.certificate).decode(),
        "MESHLET_PROXY_IDENTITY_LOCAL_NAME": WEB,
    }
    token = tmp_path / "token"
    token.write_text("tok")
    named = {**env, "MESHLET_PROXY_IDENTITY_TOKEN_FILE": str(token)}
    assert IdentityClientSettings.from_env(named).token_file == token
    for path, problem in ((tmp_path / "missing", "does not exist"), (tmp_path, "is not a file")):
        with pytest.raises(IdentitySettingsError, match=f"TOKEN_FILE={path}: {problem}"):
            IdentityClientSettings.from_env({**env, "MESHLET_PROXY_IDENTITY_TOKEN_FILE": str(path)})
