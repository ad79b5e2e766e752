"""``meshlet identity init|inspect|issue|token`` as a user runs them."""

from __future__ import annotations

import asyncio
import datetime
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from identity.ca import create_issuer, create_trust_anchor, validate_issuer
from identity.cli import main
from identity.issuer import IssuerFiles, load_issuer_files
from identity.tokens import StaticTokenFile
from meshlet.names import control_plane_identity

from .pki import DAY, pem


def _init(directory: Path, *extra: str) -> None:
    assert main(["init", "--dir", str(directory), *extra]) == 0


def test_init_writes_a_usable_issuer_and_kustomization(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    _init(pki, "--issuer-lifetime", "30d")
    files = IssuerFiles(cert=pki / "crt.pem", key=pki / "key.pem", anchors=pki / "ca-bundle.crt")
    certificate, key, anchors = load_issuer_files(files)
    now = datetime.datetime.now(datetime.UTC)
    assert validate_issuer(certificate, key, anchors, now=now) == []
    assert certificate.subject.rfc4514_string() == "CN=identity.meshlet.cluster.local"
    lifetime = certificate.not_valid_after_utc - now
    assert 29 * DAY < lifetime <= 30 * DAY
    for private in ("key.pem", "ca.key"):
        assert stat.S_IMODE((pki / private).stat().st_mode) == 0o600
    rendered = subprocess.run(
        [str(Path(sys.executable).parent / "kubectl"), "kustomize", str(pki)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered)}
    assert documents["Secret"]["metadata"] == {
        "name": "meshlet-identity-issuer",
        "namespace": "meshlet",
    }
    assert set(documents["Secret"]["data"]) == {"crt.pem", "key.pem"}
    assert documents["ConfigMap"]["data"]["ca-bundle.crt"] == (pki / "ca-bundle.crt").read_text()
    assert "ca.key" not in rendered


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _init(tmp_path)
    before = (tmp_path / "key.pem").read_bytes()
    assert main(["init", "--dir", str(tmp_path)]) == 1
    assert "use --force" in capsys.readouterr().err
    assert (tmp_path / "key.pem").read_bytes() == before
    _init(tmp_path, "--force")
    assert (tmp_path / "key.pem").read_bytes() != before


def test_inspect_chain_and_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    anchor = create_trust_anchor(name="root.meshlet.cluster.local", now=now, lifetime=365 * DAY)
    soon = create_issuer(anchor, name="identity.meshlet.cluster.local", now=now, lifetime=30 * DAY)
    (tmp_path / "ca.crt").write_bytes(pem(anchor.certificate))
    (tmp_path / "issuer.crt").write_bytes(pem(soon.certificate))
    assert main(["inspect", str(tmp_path / "ca.crt"), str(tmp_path / "issuer.crt")]) == 0
    out = capsys.readouterr().out
    assert "root.meshlet.cluster.local [CA]\n  chain:   self-signed (a trust anchor)" in out
    assert "chain:   signed by root.meshlet.cluster.local" in out
    assert "WARNING: expires in 29 days" in out
    assert out.count("WARNING") == 1
    # Without the anchor, the issuer's signer is named but not found; an expired one fails.
    expired = create_issuer(anchor, name="old", now=now - 10 * DAY, lifetime=DAY)
    (tmp_path / "old.crt").write_bytes(pem(expired.certificate))
    assert main(["inspect", str(tmp_path / "old.crt")]) == 1
    out = capsys.readouterr().out
    assert "(not among the given files)" in out
    assert "EXPIRED on" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "/nonexistent.pem"], "cannot read /nonexistent.pem"),
        (["issue", "webhook", "--dir", "/nonexistent", "--out", "/tmp/x"], "cannot read"),
    ],
)
def test_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_inspect_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.pem").write_text("hello")
    assert main(["inspect", str(tmp_path / "junk.pem")]) == 1
    assert "no PEM certificate" in capsys.readouterr().err


def test_issue_control_plane_certificate(tmp_path: Path) -> None:
    _init(tmp_path / "pki")
    out = tmp_path / "webhook-tls"
    argv = [
        "issue",
        "webhook",
        "--dir",
        str(tmp_path / "pki"),
        "--out",
        str(out),
        "--lifetime",
        "2h",
    ]
    assert main(argv) == 0
    chain = x509.load_pem_x509_certificates((out / "tls.crt").read_bytes())
    assert len(chain) == 2
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(control_plane_identity("webhook"))]
    assert chain[0].not_valid_after_utc - chain[0].not_valid_before_utc <= datetime.timedelta(
        hours=2, seconds=40
    )
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600


def test_token_helper_feeds_the_static_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens"
    assert (
        main(["token", "--file", str(tokens), "--namespace", "shop", "--serviceaccount", "web"])
        == 0
    )
    web = capsys.readouterr().out.strip()
    assert (
        main(["token", "--file", str(tokens), "--namespace", "shop", "--serviceaccount", "db"]) == 0
    )
    db = capsys.readouterr().out.strip()
    reviewer = StaticTokenFile(tokens)
    assert asyncio.run(reviewer.review(web)).username == "system:serviceaccount:shop:web"
    assert asyncio.run(reviewer.review(db)).username == "system:serviceaccount:shop:db"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600


def test_meshlet_dispatcher_runs_identity(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshlet.cli", "identity", "init", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "keep offline" in result.stdout


def test_rotate_issuer_keeps_the_anchor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _init(tmp_path)
    anchor_before = (tmp_path / "ca-bundle.crt").read_bytes()
    issuer_before = (tmp_path / "crt.pem").read_bytes()
    assert main(["rotate-issuer", "--dir", str(tmp_path), "--issuer-lifetime", "10d"]) == 0
    assert (tmp_path / "ca-bundle.crt").read_bytes() == anchor_before
    assert (tmp_path / "crt.pem").read_bytes() != issuer_before
    files = IssuerFiles(
        cert=tmp_path / "crt.pem", key=tmp_path / "key.pem", anchors=tmp_path / "ca-bundle.crt"
    )
    certificate, key, anchors = load_issuer_files(files)
    assert validate_issuer(certificate, key, anchors, now=datetime.datetime.now(datetime.UTC)) == []
    # With a key that matches no anchor in the bundle, a clear refusal.
    other = tmp_path / "other"
    _init(other)
    capsys.readouterr()
    argv = ["rotate-issuer", "--dir", str(tmp_path), "--anchor-key", str(other / "ca.key")]
    assert main(argv) == 1
    assert "no certificate in" in capsys.readouterr().err
