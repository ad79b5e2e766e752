"""The ASGI app in process: the safety net that keeps a bug from becoming a 500."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import httpx
import pytest

from identity.app import create_app
from identity.issuer import IssuerFiles, IssuerStore
from identity.service import Authority
from identity.settings import IdentitySettings
from identity.tokens import TokenVerdict

from .pki import IDENTITY, make_ca, make_csr, write_issuer_files


class _ExplodingReviewer:
    async def review(self, token: str) -> TokenVerdict:
        raise RuntimeError(f"bug while holding {token}")

    async def aclose(self) -> None:
        return None


@pytest.mark.asyncio
async def test_unexpected_error_is_a_503_without_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    anchors, cert, key = write_issuer_files(tmp_path, *make_ca(now))
    store = IssuerStore(IssuerFiles(cert=cert, key=key, anchors=anchors))
    store.refresh(now)
    authority = Authority(settings=IdentitySettings(), store=store, reviewer=_ExplodingReviewer())
    app = create_app(authority)
    body = json.dumps({"identity": IDENTITY, "csr": make_csr().decode()})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://identity") as client:
        response = await client.post(
            "/v1/certify", content=body, headers={"Authorization": "Bearer secret-token"}
        )
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 503
    assert response.json()["reason"] == "internal_error"
    assert "certify failed unexpectedly: RuntimeError" in caplog.text
    assert "secret-token" not in caplog.text
    assert 'identity_refusals_total{reason="internal_error"} 1.0' in metrics
