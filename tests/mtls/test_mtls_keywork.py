"""The identity client's cryptography runs in a worker process; the proxy never loads it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography import x509

from proxy.identity import CertifyRefused, IdentityClientError, InvalidAnswer
from proxy.identity.keywork import accept_in_worker, keygen_in_worker, run_keywork
from tests.mtls.conftest import WEB


def test_the_proxy_process_does_not_import_cryptography() -> None:
    code = (
        "import sys, proxy.__main__, proxy.identity, proxy.tlsglue, proxy.tapserver\n"
        "roots = {'cryptography', 'OpenSSL'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in roots)\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.trio
async def test_worker_makes_a_key_and_a_csr_for_the_identity() -> None:
    key = await keygen_in_worker(WEB)
    assert key.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "secret" in repr(key)
    assert "PRIVATE" not in repr(key)
    csr = x509.load_pem_x509_csr(key.csr_pem.encode())
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.DNSName(WEB)]
    assert csr.is_signature_valid


@pytest.mark.trio
async def test_worker_checks_answers() -> None:
    key = await keygen_in_worker(WEB)
    anchors = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
    refusal = b'{"reason": "token_rejected", "message": "bad token"}'
    with pytest.raises(CertifyRefused) as refused:
        await accept_in_worker(403, refusal, key=key, identity=WEB, anchors_pem=anchors)
    assert str(refused.value) == "HTTP 403 token_rejected: bad token"
    with pytest.raises(InvalidAnswer, match="not a certificate"):
        await accept_in_worker(200, b"{}", key=key, identity=WEB, anchors_pem=anchors)


@pytest.mark.trio
async def test_a_broken_worker_request_is_a_retryable_error() -> None:
    with pytest.raises(IdentityClientError, match="the key worker failed"):
        await run_keywork({"op": "keygen"})  # no identity: the worker fails
