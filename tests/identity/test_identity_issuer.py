"""The issuer store and the self-issued serving certificate, without a server."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from identity.issuer import IssuerFiles, IssuerStore
from identity.serving import SelfServing
from meshlet.names import control_plane_identity

from .pki import NOW, as_issuer, make_ca, write_issuer_files


def _store(tmp_path: Path) -> tuple[IssuerStore, IssuerFiles]:
    anchors, cert, key = write_issuer_files(tmp_path, *make_ca())
    files = IssuerFiles(cert=cert, key=key, anchors=anchors)
    return IssuerStore(files), files


def test_store_loads_validates_and_follows_time(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    assert store.refresh(NOW) is True
    assert store.state.issuer is not None
    assert store.refresh(NOW) is False  # nothing changed
    assert store.reloads == 1
    # Same files, later: the issuer expired without any file changing.
    later = NOW + datetime.timedelta(days=91)
    assert store.refresh(later) is True
    assert store.state.problems == ["issuer_expired"]
    assert store.state.certificate is not None
    assert store.reloads == 1


def test_missing_and_unusable_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, files = _store(tmp_path)
    files.key.unlink()
    store.refresh(NOW)
    assert store.state.problems == ["issuer_unavailable"]
    assert f"cannot read {files.key}" in store.state.detail
    rsa_key = rsa.generate_private_key(65537, 2048)
    files.key.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    store.refresh(NOW)
    assert "must be ECDSA" in store.state.detail
    files.key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    store.refresh(NOW)
    assert "not an unencrypted PEM private key" in store.state.detail
    assert "nope" not in caplog.text
    assert "issuer not usable (issuer_unavailable)" in caplog.text


def test_serving_certificate_renews_at_70_percent(tmp_path: Path) -> None:
    anchor, issuer = make_ca()
    name = control_plane_identity("identity")
    serving = SelfServing(
        tmp_path / "serving",
        name,
        lifetime=datetime.timedelta(hours=10),
        clock_skew=datetime.timedelta(0),
    )
    assert serving.due(NOW)
    serving.issue(as_issuer(anchor, issuer), NOW)
    assert not serving.due(NOW + datetime.timedelta(hours=6, minutes=59))
    assert serving.due(NOW + datetime.timedelta(hours=7))
    chain = x509.load_pem_x509_certificates(serving.cert_file.read_bytes())
    assert [c.issuer for c in chain] == [issuer.certificate.subject, anchor.certificate.subject]
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(name)]
    assert serving.key_file.stat().st_mode & 0o077 == 0
    assert (tmp_path / "serving").stat().st_mode & 0o077 == 0
