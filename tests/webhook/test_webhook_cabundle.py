"""The caBundle keeper: the pure patch, and the keeper against the fake API server."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from meshlet.devcert import write_self_signed
from tests.webhook.fakeapi import FakeApiServer
from webhook.cabundle import (
    CaBundleError,
    CaBundleKeeper,
    bundle_from_certificate_file,
    ca_bundle_patch,
)

BUNDLE = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
ENCODED = base64.b64encode(BUNDLE).decode()


def configuration(*bundles: str | None, version: str | None = "7") -> dict[str, Any]:
    metadata = {"name": "meshlet-webhook"} | ({"resourceVersion": version} if version else {})
    return {
        "metadata": metadata,
        "webhooks": [{"clientConfig": {} if b is None else {"caBundle": b}} for b in bundles],
    }


@pytest.mark.parametrize(
    ("bundles", "patched"),
    [
        pytest.param([ENCODED], [], id="in-step"),
        pytest.param(["c3RhbGU="], [0], id="stale"),
        pytest.param([None], [0], id="missing"),
        pytest.param(["%%%not-base64"], [0], id="garbage"),
        pytest.param([ENCODED, "c3RhbGU=", None], [1, 2], id="only-the-stale-ones"),
        pytest.param([], [], id="no-webhooks"),
    ],
)
def test_patch(bundles: list[str | None], patched: list[int]) -> None:
    operations = ca_bundle_patch(configuration(*bundles), BUNDLE)
    if not patched:
        assert operations == []
        return
    assert operations[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    assert operations[1:] == [
        {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ENCODED}
        for i in patched
    ]


def test_patch_without_resource_version_has_no_guard() -> None:
    operations = ca_bundle_patch(configuration("c3RhbGU=", version=None), BUNDLE)
    assert [op["op"] for op in operations] == ["add"]


def test_bundle_is_the_last_certificate_of_the_chain(tmp_path: Path) -> None:
    leaf = write_self_signed(tmp_path, ["leaf.example"], stem="leaf")
    root = write_self_signed(tmp_path, ["root.example"], stem="root")
    chain = tmp_path / "chain.crt"
    chain.write_bytes(leaf.cert.read_bytes() + root.cert.read_bytes())
    assert bundle_from_certificate_file(chain) == root.cert.read_bytes()


def test_unreadable_certificate_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(CaBundleError, match="cannot read a PEM certificate"):
        bundle_from_certificate_file(tmp_path / "bad.crt")


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def api(fake: FakeApiServer) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration(host=fake.url)
    async with client.ApiClient(configuration) as api_client:
        yield api_client


def served_bundle(fake: FakeApiServer, index: int = 0) -> bytes:
    webhook = fake.webhook_configurations["meshlet-webhook"]["webhooks"][index]
    return base64.b64decode(webhook["clientConfig"]["caBundle"])


@pytest.mark.asyncio
async def test_keeper_patches_a_stale_bundle_then_rests(
    fake: FakeApiServer, api: client.ApiClient, tmp_path: Path
) -> None:
    files = write_self_signed(tmp_path, ["meshlet-webhook.meshlet.svc"])
    fake.set_webhook_configuration("meshlet-webhook", ["c3RhbGU=", None])
    keeper = CaBundleKeeper(api, name="meshlet-webhook", certificate_file=files.cert)
    assert await keeper.sync_once() is True
    assert served_bundle(fake, 0) == files.cert.read_bytes()
    assert served_bundle(fake, 1) == files.cert.read_bytes()
    assert "patch mwc meshlet-webhook application/json-patch+json" in fake.requests
    assert await keeper.sync_once() is False
    assert keeper.patches == 1

    rotated = write_self_signed(tmp_path, ["meshlet-webhook.meshlet.svc"])
    assert await keeper.sync_once() is True
    assert served_bundle(fake) == rotated.cert.read_bytes()


@pytest.mark.asyncio
async def test_keeper_reports_api_errors(
    fake: FakeApiServer, api: client.ApiClient, tmp_path: Path
) -> None:
    files = write_self_signed(tmp_path, ["meshlet-webhook.meshlet.svc"])
    keeper = CaBundleKeeper(api, name="meshlet-webhook", certificate_file=files.cert)
    with pytest.raises(CaBundleError, match="HTTP 404"):
        await keeper.sync_once()
    fake.set_webhook_configuration("meshlet-webhook", ["c3RhbGU="])
    fake.fail_patches = 1
    with pytest.raises(CaBundleError, match="HTTP 500"):
        await keeper.sync_once()
    assert await keeper.sync_once() is True


@pytest.mark.asyncio
async def test_a_concurrent_writer_wins_the_race(
    fake: FakeApiServer, api: client.ApiClient, tmp_path: Path
) -> None:
    files = write_self_signed(tmp_path, ["meshlet-webhook.meshlet.svc"])
    fake.set_webhook_configuration("meshlet-webhook", ["c3RhbGU="])
    stale = json.loads(json.dumps(fake.webhook_configurations["meshlet-webhook"]))
    fake.set_webhook_configuration("meshlet-webhook", ["b3RoZXI="])  # someone else wrote it
    operations = ca_bundle_patch(stale, files.cert.read_bytes())
    patch = client.AdmissionregistrationV1Api(api)
    response = await patch.patch_mutating_webhook_configuration(
        "meshlet-webhook",
        operations,
        _content_type="application/json-patch+json",
        _preload_content=False,
    )
    assert response.status == 422  # the resourceVersion test failed; nothing was overwritten
    response.release()
    assert served_bundle(fake) == b"other"
