"""``meshlet-identity`` as a real process over real TLS, driven with curl and openssl."""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from identity.ca import create_issuer, create_trust_anchor

from .conftest import PKI, SERVICE_NAME, IdentityServer, start_identity, stop
from .pki import DAY, IDENTITY, ip_san, key_pem, make_csr, pem

OTHER = "admin.kube-system.serviceaccount.identity.meshlet.cluster.local"


def curl(
    server: IdentityServer,
    path: str,
    *,
    body: bytes | None = None,
    token: str | None = None,
    extra: list[str] | None = None,
) -> tuple[int, str]:
    url = f"https://{SERVICE_NAME}:{server.port}{path}"
    argv = [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        str(server.pki.anchors_file),
        "--resolve",
        f"{SERVICE_NAME}:{server.port}:127.0.0.1",
        "-w",
        "\n%{http_code}",
    ]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    result = subprocess.run(
        [*argv, *(extra or []), url], input=body, capture_output=True, check=True, timeout=20
    )
    text, _, status = result.stdout.decode().rpartition("\n")
    return int(status), text


def certify_body(csr: bytes | str, identity: str = IDENTITY) -> bytes:
    text = csr.decode() if isinstance(csr, bytes) else csr
    return json.dumps({"identity": identity, "csr": text}).encode()


def openssl_csr(directory: Path, san: str) -> bytes:
    key = directory / "leaf.key"
    csr = directory / "leaf.csr"
    subprocess.run(
        [
            "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/",
            "-addext", f"subjectAltName=DNS:{san}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return csr.read_bytes()


def test_certify_openssl_csr_and_verify_chain(
    identity_server: IdentityServer, tmp_path: Path
) -> None:
    csr = openssl_csr(tmp_path, IDENTITY)
    status, text = curl(identity_server, "/v1/certify", body=certify_body(csr), token="tok-web")
    assert status == 200, text
    answer = json.loads(text)
    leaf = x509.load_pem_x509_certificate(answer["leaf_certificate"].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(IDENTITY)]
    valid_until = datetime.datetime.fromisoformat(answer["valid_until"].replace("Z", "+00:00"))
    assert valid_until == leaf.not_valid_after_utc
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert (
        datetime.timedelta(hours=23, minutes=59)
        < lifetime
        <= datetime.timedelta(hours=24, seconds=20)
    )
    (tmp_path / "leaf.pem").write_text(answer["leaf_certificate"])
    (tmp_path / "chain.pem").write_text("".join(answer["intermediate_certificates"]))
    verify = subprocess.run(
        [
            "openssl", "verify", "-CAfile", str(identity_server.pki.anchors_file),
            "-untrusted", str(tmp_path / "chain.pem"), "-purpose", "sslclient",
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The key matches the CSR's: openssl's private key signs for this leaf.
    key = serialization.load_pem_private_key((tmp_path / "leaf.key").read_bytes(), None)
    assert key.public_key() == leaf.public_key()


def test_certify_base64_der(identity_server: IdentityServer) -> None:
    der = x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER)
    body = certify_body(base64.b64encode(der).decode())
    status, text = curl(identity_server, "/v1/certify", body=body, token="tok-web")
    assert status == 200, text


@pytest.mark.parametrize(
    ("body", "token", "status", "reason"),
    [
        pytest.param(
            certify_body(make_csr()), "tok-admin", 403, "identity_mismatch", id="token-for-other-sa"
        ),
        pytest.param(
            certify_body(make_csr(sans=[x509.DNSName(OTHER)]), OTHER),
            "tok-web",
            403,
            "identity_mismatch",
            id="ask-for-other-identity",
        ),
        pytest.param(
            certify_body(make_csr()), "not-a-token", 403, "token_invalid", id="unknown-token"
        ),
        pytest.param(certify_body(make_csr()), None, 401, "token_missing", id="no-token"),
        pytest.param(
            certify_body(make_csr(sans=[x509.DNSName(OTHER)])),
            "tok-web",
            400,
            "csr_san_mismatch",
            id="csr-for-other",
        ),
        pytest.param(
            certify_body(make_csr(sans=[x509.DNSName(IDENTITY), ip_san("10.1.2.3")])),
            "tok-web",
            400,
            "csr_forbidden_san",
            id="ip-san",
        ),
        pytest.param(
            certify_body(make_csr(ca=True)), "tok-web", 400, "csr_requests_ca", id="ca-true"
        ),
        pytest.param(
            certify_body("bm90IGEgY3Ny"), "tok-web", 400, "csr_malformed", id="garbage-der"
        ),
        pytest.param(certify_body("%%%"), "tok-web", 400, "csr_malformed", id="not-base64"),
        pytest.param(b"{not json", "tok-web", 400, "body_malformed", id="not-json"),
        pytest.param(b'["identity", "csr"]', "tok-web", 400, "body_malformed", id="json-list"),
        pytest.param(
            b'{"identity": 1, "csr": "x"}', "tok-web", 400, "body_malformed", id="wrong-types"
        ),
        pytest.param(
            certify_body(make_csr(), "UPPER.case"),
            "tok-web",
            400,
            "identity_malformed",
            id="bad-identity",
        ),
        pytest.param(b"x" * (65 * 1024), "tok-web", 413, "body_too_large", id="oversized"),
    ],
)
def test_refusals(
    identity_server: IdentityServer, body: bytes, token: str | None, status: int, reason: str
) -> None:
    got_status, text = curl(identity_server, "/v1/certify", body=body, token=token)
    assert got_status == status, text
    answer = json.loads(text)
    assert answer["reason"] == reason
    assert answer["message"]


def test_chunked_oversized_body_is_refused(identity_server: IdentityServer) -> None:
    status, text = curl(
        identity_server,
        "/v1/certify",
        body=b"x" * (200 * 1024),
        token="tok-web",
        extra=["-H", "Transfer-Encoding: chunked"],
    )
    assert status == 413, text


def test_health_metrics_and_no_secrets_in_logs(identity_server: IdentityServer) -> None:
    assert curl(identity_server, "/healthz") == (200, "ok\n")
    assert curl(identity_server, "/readyz") == (200, "ready\n")
    curl(identity_server, "/v1/certify", body=certify_body(make_csr()), token="tok-web")
    curl(identity_server, "/v1/certify", body=certify_body(make_csr()), token="tok-admin")
    status, text = curl(identity_server, "/metrics")
    assert status == 200
    assert "identity_certificates_issued_total 1.0" in text
    assert 'identity_refusals_total{reason="identity_mismatch"} 1.0' in text
    assert "identity_certify_duration_seconds_count 2.0" in text
    assert "identity_issuer_ready 1.0" in text
    ttl = float(re.search(r"^issuer_cert_ttl_seconds (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert 89 * 86400 < ttl <= 90 * 86400
    logs = identity_server.logs()
    assert "issued " + IDENTITY in logs
    assert "tok-web" not in logs
    assert "tok-admin" not in logs
    assert "PRIVATE KEY" not in logs


def test_serving_certificate_is_self_issued_for_the_service_identity(
    identity_server: IdentityServer,
) -> None:
    context = identity_server.tls_context()
    with (
        socket.create_connection(("127.0.0.1", identity_server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVICE_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    served = x509.load_der_x509_certificate(der)
    assert served.issuer == identity_server.pki.issuer.certificate.subject
    # Any other name is refused by a verifying client.
    with (
        socket.create_connection(("127.0.0.1", identity_server.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(
            raw, server_hostname="web.shop.serviceaccount.identity.meshlet.cluster.local"
        )


def _secret_volume(directory: Path, version: str, files: dict[str, bytes]) -> None:
    """Lay files out as a Kubernetes Secret volume does, swapping the ``..data`` symlink."""
    target = directory / f"..{version}"
    target.mkdir(parents=True)
    for name, content in files.items():
        (target / name).write_bytes(content)
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(target.name)
    os.replace(tmp_link, directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def _wait_for(predicate: object, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _served_issuer_serial(port: int, cafile: Path) -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVICE_NAME) as tls,
    ):
        chain = tls.getpeercert(binary_form=True)
    assert chain is not None
    return x509.load_der_x509_certificate(chain).serial_number


def test_issuer_reload_and_not_ready(pki: PKI, token_file: Path, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    volume = tmp_path / "secret"
    _secret_volume(
        volume, "v1", {"crt.pem": pem(pki.issuer.certificate), "key.pem": key_pem(pki.issuer.key)}
    )
    live = PKI(
        pki.directory,
        pki.anchor,
        pki.issuer,
        pki.anchors_file,
        volume / "crt.pem",
        volume / "key.pem",
    )
    log_file = tmp_path / "identity.log"
    port, process = start_identity(live, token_file, log_file)
    server = IdentityServer(port, live, token_file, process, log_file)
    try:
        first_serving = _served_issuer_serial(port, pki.anchors_file)
        # A new issuer from the same anchor: the service signs with it and re-issues its own cert.
        fresh = create_issuer(
            pki.anchor, name="identity.meshlet.cluster.local", now=now, lifetime=30 * DAY
        )
        _secret_volume(
            volume, "v2", {"crt.pem": pem(fresh.certificate), "key.pem": key_pem(fresh.key)}
        )

        def signed_by_fresh() -> bool:
            status, text = curl(
                server, "/v1/certify", body=certify_body(make_csr()), token="tok-web"
            )
            assert status == 200, text
            chain = json.loads(text)["intermediate_certificates"][0]
            return chain == pem(fresh.certificate).decode()

        _wait_for(signed_by_fresh, "the new issuer to be used")
        _wait_for(
            lambda: _served_issuer_serial(port, pki.anchors_file) != first_serving,
            "new serving cert",
        )
        assert "issuer loaded" in server.logs()

        # An expired issuer: not ready, certify refused with 503, metric says so.
        expired = create_issuer(
            pki.anchor, name="identity.meshlet.cluster.local", now=now - 40 * DAY, lifetime=DAY
        )
        _secret_volume(
            volume, "v3", {"crt.pem": pem(expired.certificate), "key.pem": key_pem(expired.key)}
        )
        _wait_for(lambda: curl(server, "/readyz")[0] == 503, "not ready")
        status, text = curl(server, "/readyz")
        assert json.loads(text)["reason"] == "issuer_expired"
        status, text = curl(server, "/v1/certify", body=certify_body(make_csr()), token="tok-web")
        assert (status, json.loads(text)["reason"]) == (503, "issuer_expired")
        metrics = curl(server, "/metrics")[1]
        assert "identity_issuer_ready 0.0" in metrics
        assert re.search(r"^issuer_cert_ttl_seconds -", metrics, re.M)
        assert "issuer not usable (issuer_expired)" in server.logs()

        # An issuer from a foreign anchor: not chained.
        foreign_anchor = create_trust_anchor(name="root.elsewhere", now=now, lifetime=DAY)
        foreign = create_issuer(
            foreign_anchor, name="identity.meshlet.cluster.local", now=now, lifetime=DAY
        )
        _secret_volume(
            volume, "v4", {"crt.pem": pem(foreign.certificate), "key.pem": key_pem(foreign.key)}
        )
        _wait_for(
            lambda: json.loads(curl(server, "/readyz")[1]).get("reason") == "issuer_not_chained",
            "not chained",
        )

        # Back to a good issuer: ready again without a restart.
        _secret_volume(
            volume, "v5", {"crt.pem": pem(fresh.certificate), "key.pem": key_pem(fresh.key)}
        )
        _wait_for(lambda: curl(server, "/readyz")[0] == 200, "ready again")
        assert process.poll() is None
    finally:
        stop(process)


def test_refuses_to_start_with_an_expired_issuer(
    pki: PKI, token_file: Path, tmp_path: Path
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expired = create_issuer(
        pki.anchor, name="identity.meshlet.cluster.local", now=now - 40 * DAY, lifetime=DAY
    )
    pki.cert_file.write_bytes(pem(expired.certificate))
    pki.key_file.write_bytes(key_pem(expired.key))
    log_file = tmp_path / "identity.log"
    _, process = start_identity(pki, token_file, log_file, wait=False)
    try:
        assert process.wait(timeout=20) == 1
    finally:
        stop(process)
    logs = log_file.read_text()
    assert "cannot start: the issuer cannot sign: the issuer certificate has expired" in logs
    assert "Traceback" not in logs
