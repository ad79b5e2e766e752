"""The issuer the service signs with, loaded from files and followed as they change.

Theory of operation: ``IssuerStore.refresh(now)`` runs at start and then every
``reload_interval``. It re-reads the three files (issuer certificate, issuer key, trust anchors)
when any of them changed on disk (mtime, size, inode: a Kubernetes Secret update swaps a symlink),
and re-validates the issuer every time, because an issuer that was fine an hour ago can expire.
The files on disk decide: if they hold an issuer that is expired, not a CA or not chained to an
anchor, the service stops signing and reports not ready, with one log line when that changes.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from identity.ca import Issuer, validate_issuer
from identity.reasons import describe

__all__ = ["IssuerFiles", "IssuerFilesError", "IssuerState", "IssuerStore", "load_issuer_files"]

log = logging.getLogger("meshlet.identity.issuer")

_Stamp = tuple[tuple[float, int, int], ...]


@dataclass(frozen=True, slots=True)
class IssuerFiles:
    cert: Path
    key: Path
    anchors: Path


@dataclass(frozen=True, slots=True)
class IssuerState:
    """``issuer`` is set exactly when ``problems`` is empty."""

    issuer: Issuer | None = None
    problems: list[str] = field(default_factory=lambda: ["issuer_unavailable"])
    detail: str = "not loaded yet"
    # The loaded certificate even when unusable, for the TTL metric.
    certificate: x509.Certificate | None = None


class IssuerFilesError(ValueError):
    """An issuer file is missing or unparseable; the message names it (never key bytes)."""


def load_issuer_files(
    files: IssuerFiles,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, tuple[x509.Certificate, ...]]:
    """Parse the three files; ``IssuerFilesError`` names the file and the cause."""

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as error:
            raise IssuerFilesError(f"cannot read {path}: {error.strerror}") from None

    cert_pem, key_pem, anchors_pem = read(files.cert), read(files.key), read(files.anchors)
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as error:
        raise IssuerFilesError(f"{files.cert}: not a PEM certificate ({error})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise IssuerFilesError(
            f"{files.key}: not an unencrypted PEM private key ({error})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IssuerFilesError(f"{files.key}: the issuer key must be ECDSA (P-256)")
    try:
        anchors = tuple(x509.load_pem_x509_certificates(anchors_pem))
    except ValueError as error:
        raise IssuerFilesError(f"{files.anchors}: not a PEM certificate bundle ({error})") from None
    return certificate, key, anchors


class IssuerStore:
    """The current issuer state; ``refresh`` is cheap when nothing changed."""

    def __init__(self, files: IssuerFiles) -> None:
        self.files = files
        self.state = IssuerState()
        self.reloads = 0
        self._stamp: _Stamp | None = None
        self._loaded: (
            tuple[x509.Certificate, ec.EllipticCurvePrivateKey, tuple[x509.Certificate, ...]] | None
        ) = None
        self._load_error = "not loaded yet"

    def _read_stamp(self) -> _Stamp | None:
        stamps = []
        for path in (self.files.cert, self.files.key, self.files.anchors):
            try:
                info = path.stat()
            except OSError:
                return None
            stamps.append((info.st_mtime, info.st_size, info.st_ino))
        return tuple(stamps)

    def refresh(self, now: datetime.datetime) -> bool:
        """Reload if the files changed, re-validate; return whether the usable issuer changed."""
        stamp = self._read_stamp()
        if stamp is None or stamp != self._stamp:
            self._stamp = stamp
            try:
                self._loaded = load_issuer_files(self.files)
                self._load_error = ""
                self.reloads += 1
            except IssuerFilesError as error:
                self._loaded = None
                self._load_error = str(error)
        return self._update(self._validate(now))

    def _validate(self, now: datetime.datetime) -> IssuerState:
        if self._loaded is None:
            return IssuerState(detail=self._load_error)
        certificate, key, anchors = self._loaded
        problems = validate_issuer(certificate, key, anchors, now=now)
        if problems:
            detail = "; ".join(describe(problem) for problem in problems)
            return IssuerState(problems=problems, detail=detail, certificate=certificate)
        issuer = Issuer(certificate=certificate, key=key, anchors=anchors)
        return IssuerState(issuer=issuer, problems=[], detail="", certificate=certificate)

    def _update(self, fresh: IssuerState) -> bool:
        previous = self.state
        self.state = fresh
        before = previous.issuer.certificate if previous.issuer else None
        after = fresh.issuer.certificate if fresh.issuer else None
        changed = fresh.problems != previous.problems or fresh.detail != previous.detail
        if changed and fresh.issuer is None:
            log.error(
                "issuer not usable (%s): %s; refusing to sign and reporting not ready",
                ",".join(fresh.problems),
                fresh.detail,
            )
        if after is not None and after != before:
            log.info(
                "issuer loaded: %s, serial %x, expires %s",
                after.subject.rfc4514_string(),
                after.serial_number,
                after.not_valid_after_utc.isoformat(),
            )
        return after != before
