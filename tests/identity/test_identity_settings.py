"""Settings from env and flags, start-up errors, and the Kubernetes token source end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kmock
import pytest

from identity.settings import IdentitySettings, SettingsError, load_settings
from meshlet.names import IDENTITY_TOKEN_AUDIENCE

from .conftest import PKI, SERVICE_NAME, free_port
from .pki import make_csr

pytestmark = pytest.mark.kmock(cls=kmock.RawHandler)


def test_defaults() -> None:
    settings = load_settings([], {})
    assert settings == IdentitySettings()
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 8080)
    assert settings.leaf_lifetime == 86400
    assert settings.clock_skew == 20
    assert settings.token_file is None


def test_env_and_flags_flag_wins() -> None:
    env = {
        "MESHLET_IDENTITY_LISTEN_ADDR": "127.0.0.1:9000",
        "MESHLET_IDENTITY_LEAF_LIFETIME": "1h",
        "MESHLET_IDENTITY_TOKEN_SOURCE": "/etc/tokens",
        "MESHLET_IDENTITY_CLOCK_SKEW": "0s",
    }
    settings = load_settings(["--leaf-lifetime", "30m", "--trust-domain", "example.org"], env)
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 9000)
    assert settings.leaf_lifetime == 1800
    assert settings.clock_skew == 0
    assert settings.trust_domain == "example.org"
    assert settings.token_file == Path("/etc/tokens")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MESHLET_IDENTITY_LISTEN_ADDR": "nowhere"}, "MESHLET_IDENTITY_LISTEN_ADDR='nowhere'"),
        ({"MESHLET_IDENTITY_LISTEN_ADDR": "h:70000"}, "expected host:port"),
        ({"MESHLET_IDENTITY_LEAF_LIFETIME": "soon"}, "MESHLET_IDENTITY_LEAF_LIFETIME"),
        ({"MESHLET_IDENTITY_LEAF_LIFETIME": "0s"}, "more than zero"),
        ({"MESHLET_IDENTITY_MAX_BODY_BYTES": "-1"}, "positive whole number"),
        ({"MESHLET_IDENTITY_LOG_FORMAT": "xml"}, "plain or json"),
        ({"MESHLET_IDENTITY_TRUST_DOMAIN": ""}, "is empty"),
    ],
)
def test_bad_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings([], env)


def _run_identity(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "identity", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_setting_exits_2_with_one_line() -> None:
    result = _run_identity({"MESHLET_IDENTITY_LEAF_LIFETIME": "forever"})
    assert result.returncode == 2
    assert result.stderr.startswith("meshlet-identity: MESHLET_IDENTITY_LEAF_LIFETIME")
    assert result.stderr.count("\n") == 1


def test_kubernetes_source_outside_a_cluster_is_a_clear_error(pki: PKI) -> None:
    env = {
        "MESHLET_IDENTITY_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "MESHLET_IDENTITY_ISSUER_CERT_FILE": str(pki.cert_file),
        "MESHLET_IDENTITY_ISSUER_KEY_FILE": str(pki.key_file),
        "MESHLET_IDENTITY_TRUST_ANCHORS_FILE": str(pki.anchors_file),
        "KUBERNETES_SERVICE_HOST": "",
        "KUBECONFIG": "",
    }
    result = _run_identity(env)
    assert result.returncode == 1
    assert "cannot configure the Kubernetes client for TokenReview" in result.stderr
    assert "Traceback" not in result.stderr


def _kubeconfig(path: Path, url: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url.rstrip("/")}}],
        "users": [{"name": "identity", "user": {"token": "identity-sa-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "identity"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config))


def _review(request: kmock.Request) -> dict[str, Any]:
    token = request.data["spec"]["token"]
    if token == "projected-web-token":
        status = {
            "authenticated": True,
            "user": {"username": "system:serviceaccount:shop:web"},
            "audiences": [IDENTITY_TOKEN_AUDIENCE],
        }
    else:
        status = {"authenticated": False, "error": "token has expired"}
    return {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "spec": request.data["spec"],
        "status": status,
    }


async def _curl(port: int, cafile: Path, body: bytes, token: str) -> tuple[int, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", "--cacert", str(cafile),
        "--resolve", f"{SERVICE_NAME}:{port}:127.0.0.1", "-w", "\n%{http_code}",
        "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
        "--data-binary", "@-", f"https://{SERVICE_NAME}:{port}/v1/certify",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate(body)
    text, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(text)


@pytest.mark.asyncio
async def test_service_with_kubernetes_token_review(
    kmock: kmock.RawHandler, pki: PKI, tmp_path: Path
) -> None:
    """The real process, configured from a kubeconfig, reviews tokens with the (fake) API server."""
    kmock["post /apis/authentication.k8s.io/v1/tokenreviews"] << _review
    kubeconfig = tmp_path / "kubeconfig"
    _kubeconfig(kubeconfig, str(kmock.url))
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MESHLET_IDENTITY_LISTEN_ADDR": f"127.0.0.1:{port}",
        "MESHLET_IDENTITY_ISSUER_CERT_FILE": str(pki.cert_file),
        "MESHLET_IDENTITY_ISSUER_KEY_FILE": str(pki.key_file),
        "MESHLET_IDENTITY_TRUST_ANCHORS_FILE": str(pki.anchors_file),
    }
    log_file = tmp_path / "identity.log"
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "identity", env=env, stdout=log, stderr=log
        )
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                assert process.returncode is None, log_file.read_text()
                await asyncio.sleep(0.05)
        body = json.dumps(
            {
                "identity": "web.shop.serviceaccount.identity.meshlet.cluster.local",
                "csr": make_csr().decode(),
            }
        ).encode()
        status, answer = await _curl(port, pki.anchors_file, body, "projected-web-token")
        assert status == 200, answer
        assert answer["leaf_certificate"].startswith("-----BEGIN CERTIFICATE-----")
        status, answer = await _curl(port, pki.anchors_file, body, "expired-token")
        assert (status, answer["reason"]) == (403, "token_invalid")
        reviews = kmock["post /apis/authentication.k8s.io/v1/tokenreviews"]
        assert len(reviews) == 2
        assert reviews[0].headers["Authorization"] == "Bearer identity-sa-token"
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 15)
    assert "projected-web-token" not in log_file.read_text()
