"""The CSR decision, row by row, including the attacks a hostile pod would try."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.csr import MAX_CSR_BYTES, check_csr, check_identity, csr_bytes_from_text
from identity.reasons import REASONS
from meshlet.names import workload_identity

from .pki import IDENTITY, ip_san, make_csr

OTHER = workload_identity("admin", "kube-system")
_RSA_1024 = rsa.generate_private_key(65537, 1024)
_RSA_2048 = rsa.generate_private_key(65537, 2048)
_FIXED_DER = x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("csr", "expected"),
    [
        pytest.param(make_csr(), [], id="p256-single-dns-san"),
        pytest.param(make_csr(common_name=IDENTITY), [], id="cn-equals-identity"),
        pytest.param(make_csr(key=_RSA_2048), [], id="rsa-2048"),
        pytest.param(
            make_csr(sans=[x509.DNSName(OTHER)]), ["csr_san_mismatch"], id="other-identity"
        ),
        pytest.param(
            make_csr(sans=[x509.DNSName(IDENTITY), x509.DNSName(OTHER)]),
            ["csr_extra_sans"],
            id="extra-dns-san",
        ),
        pytest.param(
            make_csr(sans=[x509.DNSName(IDENTITY), ip_san("10.0.0.1")]),
            ["csr_forbidden_san"],
            id="ip-san",
        ),
        pytest.param(
            make_csr(sans=[x509.DNSName(IDENTITY), x509.UniformResourceIdentifier("spiffe://x/y")]),
            ["csr_forbidden_san"],
            id="uri-san",
        ),
        pytest.param(
            make_csr(sans=[x509.DNSName(IDENTITY), x509.RFC822Name("a@b.c")]),
            ["csr_forbidden_san"],
            id="email-san",
        ),
        pytest.param(make_csr(sans=[]), ["csr_missing_san"], id="no-san"),
        pytest.param(
            make_csr(common_name="somebody-else"), ["csr_common_name_mismatch"], id="cn-other"
        ),
        pytest.param(make_csr(ca=True), ["csr_requests_ca"], id="ca-true"),
        pytest.param(make_csr(key=_RSA_1024), ["csr_key_too_weak"], id="rsa-1024"),
        pytest.param(
            make_csr(key=ec.generate_private_key(ec.SECP384R1())),
            ["csr_key_unsupported"],
            id="p384",
        ),
        pytest.param(
            make_csr(key=ed25519.Ed25519PrivateKey.generate()),
            ["csr_key_unsupported"],
            id="ed25519",
        ),
        pytest.param(b"garbage", ["csr_malformed"], id="garbage-der"),
        pytest.param(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ["csr_malformed"],
            id="garbage-pem",
        ),
        pytest.param(b"A" * (MAX_CSR_BYTES + 1), ["csr_too_large"], id="oversized"),
    ],
)
def test_csr_rows(csr: bytes, expected: list[str]) -> None:
    verdict = check_csr(csr, IDENTITY)
    assert verdict.reasons == expected
    assert verdict.ok is (expected == [])
    assert all(reason in REASONS for reason in verdict.reasons)


def test_der_is_accepted_like_pem() -> None:
    der = x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER)
    assert check_csr(der, IDENTITY).ok


def test_bad_signature_is_refused() -> None:
    der = bytearray(x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s value
    verdict = check_csr(bytes(der), IDENTITY)
    assert verdict.reasons == ["csr_bad_signature"]


def test_tampered_san_breaks_signature() -> None:
    csr = make_csr(sans=[x509.DNSName(workload_identity("wex", "shop"))])
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    forged = der.replace(b"wex.shop", b"web.shop")
    assert check_csr(forged, IDENTITY).reasons == ["csr_bad_signature"]


def test_csr_field_decoding() -> None:
    pem_csr = make_csr()
    der = x509.load_pem_x509_csr(pem_csr).public_bytes(serialization.Encoding.DER)
    assert csr_bytes_from_text(pem_csr.decode()) == pem_csr
    assert csr_bytes_from_text(base64.b64encode(der).decode()) == der
    assert csr_bytes_from_text("not base64 !!") is None
    assert csr_bytes_from_text("A" * (3 * MAX_CSR_BYTES)) is None


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        (IDENTITY, True),
        ("", False),
        ("UPPER.case", False),
        ("a..b", False),
        ("-a.b", False),
        ("a" * 64 + ".b", False),
        (".".join(["a" * 60] * 5), False),
        ("with space.x", False),
        ("bad\x00byte.x", False),
    ],
)
def test_identity_names(name: str, ok: bool) -> None:
    assert (check_identity(name) == []) is ok


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_csr_bytes_never_crash(data: bytes) -> None:
    verdict = check_csr(data, IDENTITY)
    assert not verdict.ok
    assert verdict.reasons
    assert all(reason in REASONS for reason in verdict.reasons)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_der_never_crash(data: st.DataObject) -> None:
    der = bytearray(_FIXED_DER)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(der) - 1))
        der[index] = data.draw(st.integers(0, 255))
    verdict = check_csr(bytes(der), IDENTITY)
    assert all(reason in REASONS for reason in verdict.reasons)
    assert verdict.ok or verdict.reasons


def test_unknown_csr_version_is_malformed_not_a_crash() -> None:
    # Found by the fuzzer: cryptography raises InvalidVersion, which is not a ValueError.
    der = bytearray(_FIXED_DER)
    assert der[7:10] == b"\x02\x01\x00"  # INTEGER version 0 (v1)
    der[9] = 1
    assert check_csr(bytes(der), IDENTITY).reasons == ["csr_malformed"]


def test_docs_list_every_refusal_reason() -> None:
    text = (Path(__file__).parents[2] / "docs" / "identity.md").read_text()
    for slug, reason in REASONS.items():
        assert f"| `{slug}` | {reason.status} |" in text, slug


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600), st.text(max_size=80))
def test_fuzz_csr_text_field_never_crash(text: str, identity: str) -> None:
    data = csr_bytes_from_text(text)
    if data is not None:
        verdict = check_csr(data, identity)
        assert not verdict.ok
        assert all(reason in REASONS for reason in verdict.reasons)
    assert all(reason in REASONS for reason in check_identity(identity))
