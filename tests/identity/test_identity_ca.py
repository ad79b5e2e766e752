"""The CA: anchors, issuers, leaves, and the issuer checks that gate readiness."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from identity.ca import (
    DEFAULT_CLOCK_SKEW,
    CertificateAuthority,
    create_issuer,
    create_trust_anchor,
    sign_leaf,
    validate_issuer,
)
from meshlet.devcert import write_self_signed
from meshlet.names import workload_identity

from .pki import DAY, IDENTITY, NOW, as_issuer, make_ca


def _leaf_key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def test_anchor_and_issuer_shape() -> None:
    anchor, issuer = make_ca()
    for ca in (anchor, issuer):
        constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value.ca
        assert isinstance(ca.certificate.public_key(), ec.EllipticCurvePublicKey)
    cn = issuer.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "identity.meshlet.cluster.local"
    assert issuer.certificate.issuer == anchor.certificate.subject
    assert issuer.certificate.not_valid_after_utc == NOW + 90 * DAY
    issuer.certificate.verify_directly_issued_by(anchor.certificate)


def test_issuer_never_outlives_anchor() -> None:
    anchor = create_trust_anchor(name="root", now=NOW, lifetime=10 * DAY)
    issuer = create_issuer(anchor, name="identity", now=NOW, lifetime=365 * DAY)
    assert issuer.certificate.not_valid_after_utc == anchor.certificate.not_valid_after_utc


def test_valid_issuer_has_no_problems() -> None:
    anchor, issuer = make_ca()
    assert validate_issuer(issuer.certificate, issuer.key, (anchor.certificate,), now=NOW) == []


def test_expired_and_not_yet_valid_issuer() -> None:
    anchor, issuer = make_ca()
    later = NOW + 91 * DAY
    anchors = (anchor.certificate,)
    assert validate_issuer(issuer.certificate, issuer.key, anchors, now=later) == ["issuer_expired"]
    earlier = NOW - DAY
    reasons = validate_issuer(issuer.certificate, issuer.key, anchors, now=earlier)
    assert reasons == ["issuer_not_yet_valid", "issuer_not_chained"]  # the anchor too


def test_issuer_signed_by_another_anchor_is_not_chained() -> None:
    _, issuer = make_ca()
    other_anchor, _ = make_ca()
    reasons = validate_issuer(issuer.certificate, issuer.key, (other_anchor.certificate,), now=NOW)
    assert reasons == ["issuer_not_chained"]


def test_issuer_with_wrong_key() -> None:
    anchor, issuer = make_ca()
    _, other = make_ca()
    reasons = validate_issuer(issuer.certificate, other.key, (anchor.certificate,), now=NOW)
    assert reasons == ["issuer_key_mismatch"]


def test_non_ca_issuer() -> None:
    anchor, issuer = make_ca()
    leaf = sign_leaf(as_issuer(anchor, issuer), _leaf_key(), IDENTITY, now=NOW)
    fake = CertificateAuthority(certificate=leaf, key=issuer.key)
    reasons = validate_issuer(fake.certificate, fake.key, (anchor.certificate,), now=NOW)
    assert "issuer_not_ca" in reasons
    assert "issuer_key_mismatch" in reasons


def test_leaf_shape() -> None:
    anchor, issuer = make_ca()
    key = _leaf_key()
    leaf = sign_leaf(as_issuer(anchor, issuer), key, IDENTITY, now=NOW)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(IDENTITY)]
    assert leaf.not_valid_before_utc == NOW - DEFAULT_CLOCK_SKEW
    assert leaf.not_valid_after_utc == NOW + datetime.timedelta(hours=24) + DEFAULT_CLOCK_SKEW
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(issuer.certificate)


def test_leaf_clamped_to_issuer_expiry() -> None:
    anchor, issuer = make_ca()
    almost = issuer.certificate.not_valid_after_utc - datetime.timedelta(hours=1)
    leaf = sign_leaf(as_issuer(anchor, issuer), _leaf_key(), IDENTITY, now=almost)
    assert leaf.not_valid_after_utc == issuer.certificate.not_valid_after_utc


def test_long_identity_goes_in_critical_san_only() -> None:
    anchor, issuer = make_ca()
    long_identity = workload_identity("a" * 40, "b" * 40)
    leaf = sign_leaf(as_issuer(anchor, issuer), _leaf_key(), long_identity, now=NOW)
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.DNSName(long_identity)]


@pytest.mark.parametrize("lifetime", [datetime.timedelta(seconds=30), datetime.timedelta(hours=1)])
def test_custom_lifetime_and_skew(lifetime: datetime.timedelta) -> None:
    anchor, issuer = make_ca()
    skew = datetime.timedelta(seconds=5)
    leaf = sign_leaf(
        as_issuer(anchor, issuer),
        _leaf_key(),
        IDENTITY,
        now=NOW,
        lifetime=lifetime,
        clock_skew=skew,
    )
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == lifetime + 2 * skew


def test_self_signed_devcert_is_not_an_anchor_for_our_issuer(tmp_path: Path) -> None:
    # A foreign CA (here meshlet's own dev cert helper) never validates our issuer.
    files = write_self_signed(tmp_path, ["foreign"])
    foreign = x509.load_pem_x509_certificate(files.cert.read_bytes())
    _, issuer = make_ca()
    assert validate_issuer(issuer.certificate, issuer.key, (foreign,), now=NOW) == [
        "issuer_not_chained"
    ]
