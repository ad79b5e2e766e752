"""Token review: Kubernetes TokenReview against a fake API server (kmock), and the token file."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes_asyncio import client

from identity.issuer import IssuerFiles, IssuerStore
from identity.service import Authority, Certified, Refused
from identity.settings import IdentitySettings
from identity.tokens import (
    KubernetesTokenReviewer,
    StaticTokenFile,
    TokenFileError,
    identity_for_username,
    parse_token_file,
)
from meshlet.names import IDENTITY_TOKEN_AUDIENCE

from .pki import IDENTITY, make_ca, make_csr, write_issuer_files

# A plain HTTP mock: the TokenReview endpoint is all the API server this component talks to.
pytestmark = pytest.mark.kmock(cls=kmock.RawHandler)

TOKENREVIEWS = "post /apis/authentication.k8s.io/v1/tokenreviews"
AUDIENCE_ERROR = (
    '[invalid bearer token, token audiences ["api"] is invalid for the target audiences]'
)


def _status(token: str) -> dict[str, Any]:
    """What a real API server answers for each of our test tokens."""
    sa = {"username": "system:serviceaccount:shop:web", "uid": "1", "groups": []}
    match token:
        case "good-web":
            return {"authenticated": True, "user": sa, "audiences": [IDENTITY_TOKEN_AUDIENCE]}
        case "good-admin":
            admin = {"username": "system:serviceaccount:kube-system:admin"}
            return {"authenticated": True, "user": admin, "audiences": [IDENTITY_TOKEN_AUDIENCE]}
        case "api-audience":
            return {"authenticated": False, "error": AUDIENCE_ERROR, "user": {}}
        case "other-audience-echoed":
            return {"authenticated": True, "user": sa, "audiences": ["vault"]}
        case "a-person":
            person = {"username": "alice@example.com"}
            return {"authenticated": True, "user": person, "audiences": [IDENTITY_TOKEN_AUDIENCE]}
        case _:
            return {"authenticated": False, "error": "invalid bearer token", "user": {}}


def _review(request: kmock.Request) -> dict[str, Any]:
    spec = request.data["spec"]
    assert spec["audiences"] == [IDENTITY_TOKEN_AUDIENCE]
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": spec,
        "status": _status(spec["token"]),
    }


def _reviewer(url: str, *, timeout: float = 5.0) -> KubernetesTokenReviewer:
    configuration = client.Configuration(host=url.rstrip("/"))
    configuration.api_key = {"BearerToken": "identity-sa-token"}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return KubernetesTokenReviewer(configuration, timeout=timeout)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("token", "username", "reason"),
    [
        pytest.param("good-web", "system:serviceaccount:shop:web", None, id="good"),
        pytest.param("expired-or-garbage", None, "token_invalid", id="invalid"),
        pytest.param("api-audience", None, "token_wrong_audience", id="wrong-audience"),
        pytest.param("other-audience-echoed", None, "token_wrong_audience", id="audience-echo"),
        pytest.param("a-person", None, "token_not_serviceaccount", id="not-a-serviceaccount"),
    ],
)
async def test_token_review(
    kmock: kmock.RawHandler, token: str, username: str | None, reason: str | None
) -> None:
    kmock[TOKENREVIEWS] << _review
    reviewer = _reviewer(str(kmock.url))
    try:
        verdict = await reviewer.review(token)
    finally:
        await reviewer.aclose()
    assert (verdict.username, verdict.reason) == (username, reason)
    assert len(kmock[TOKENREVIEWS]) == 1
    assert kmock[TOKENREVIEWS][0].headers["Authorization"] == "Bearer identity-sa-token"


@pytest.mark.asyncio
async def test_api_server_refusing_us_is_unavailable_not_invalid(kmock: kmock.RawHandler) -> None:
    kmock[TOKENREVIEWS] << 403 << {"kind": "Status", "status": "Failure", "code": 403}
    reviewer = _reviewer(str(kmock.url))
    try:
        verdict = await reviewer.review("good-web")
    finally:
        await reviewer.aclose()
    assert verdict.reason == "token_review_unavailable"


@pytest.mark.asyncio
async def test_unreadable_answer_is_unavailable(
    kmock: kmock.RawHandler, caplog: pytest.LogCaptureFixture
) -> None:
    # No spec: the client refuses to deserialize it. Nothing of the answer reaches the log.
    kmock[TOKENREVIEWS] << {"kind": "TokenReview", "status": {"error": "good-web"}}
    reviewer = _reviewer(str(kmock.url))
    try:
        verdict = await reviewer.review("good-web")
    finally:
        await reviewer.aclose()
    assert verdict.reason == "token_review_unavailable"
    assert "good-web" not in caplog.text
    assert "TokenReview answer unreadable: ValueError" in caplog.text


@pytest.mark.asyncio
async def test_unreachable_api_server_is_unavailable() -> None:
    reviewer = _reviewer("http://127.0.0.1:9", timeout=2)
    try:
        verdict = await reviewer.review("good-web")
    finally:
        await reviewer.aclose()
    assert verdict.reason == "token_review_unavailable"


@pytest.mark.asyncio
async def test_authority_with_kubernetes_review(kmock: kmock.RawHandler, tmp_path: Path) -> None:
    kmock[TOKENREVIEWS] << _review
    anchor, issuer = make_ca(datetime.datetime.now(datetime.UTC))
    anchors, cert, key = write_issuer_files(tmp_path, anchor, issuer)
    store = IssuerStore(IssuerFiles(cert=cert, key=key, anchors=anchors))
    now = datetime.datetime.now(datetime.UTC)
    store.refresh(now)
    authority = Authority(
        settings=IdentitySettings(), store=store, reviewer=_reviewer(str(kmock.url))
    )
    try:
        csr = make_csr().decode()
        good = await authority.certify(identity=IDENTITY, csr_text=csr, token="good-web", now=now)
        assert isinstance(good, Certified)
        stolen = await authority.certify(
            identity=IDENTITY, csr_text=csr, token="good-admin", now=now
        )
        assert stolen == Refused("identity_mismatch")
        # A bad CSR is refused before the API server is asked anything.
        asked = len(kmock[TOKENREVIEWS])
        bad = await authority.certify(identity=IDENTITY, csr_text="junk", token="good-web", now=now)
        assert bad == Refused("csr_malformed")
        assert len(kmock[TOKENREVIEWS]) == asked
    finally:
        await authority.reviewer.aclose()


@pytest.mark.parametrize(
    ("username", "identity"),
    [
        ("system:serviceaccount:shop:web", IDENTITY),
        ("system:serviceaccount:shop", None),
        ("system:serviceaccount:shop:web:extra", None),
        ("system:serviceaccount::web", None),
        ("system:node:worker-1", None),
        ("alice", None),
    ],
)
def test_identity_for_username(username: str, identity: str | None) -> None:
    got = identity_for_username(username, control_plane_ns="meshlet", trust_domain="cluster.local")
    assert got == identity


def test_token_file_format() -> None:
    table = parse_token_file("# comment\n\ntok-a shop/web\n  tok-b  other/db  \n")
    assert sorted(table.values()) == [
        "system:serviceaccount:other:db",
        "system:serviceaccount:shop:web",
    ]
    assert all(b"tok" not in digest for digest in table)
    for bad in ("tok-a", "tok-a shop", "tok-a shop/web extra", "tok-a /web", "a x/y\na z/w"):
        with pytest.raises(TokenFileError, match="line") as error:
            parse_token_file(bad)
        assert "tok-a" not in str(error.value)


@pytest.mark.asyncio
async def test_token_file_reloads_and_keeps_old_tokens_on_a_bad_edit(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-1 shop/web\n")
    reviewer = StaticTokenFile(path)
    assert (await reviewer.review("tok-1")).username == "system:serviceaccount:shop:web"
    assert (await reviewer.review("tok-2")).reason == "token_invalid"
    path.write_text("tok-2 shop/db\n")
    os.utime(path, (1, 1))  # a different mtime even within one clock tick
    assert (await reviewer.review("tok-2")).username == "system:serviceaccount:shop:db"
    assert (await reviewer.review("tok-1")).reason == "token_invalid"
    path.write_text("this line is broken\n")
    assert (await reviewer.review("tok-2")).username == "system:serviceaccount:shop:db"
    assert (await reviewer.review("")).reason == "token_invalid"


def test_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read token file"):
        StaticTokenFile(tmp_path / "absent")
