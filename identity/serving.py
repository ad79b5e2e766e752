"""The identity service's own serving certificate, issued by itself.

The identity service is the CA, so it needs no cert-manager: at start, whenever the issuer
changes, and at 70% of the serving leaf's lifetime, it signs a fresh leaf for its own identity
(``meshlet-identity.<ns>.serviceaccount.identity.<ns>.<trust-domain>``) and writes it, with the
issuer as the chain, into a private directory. ``meshlet.tlsserve.ReloadingServerTLS`` serves those
files and picks up each new pair, so proxies verify the service against the trust anchors by name.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from identity.ca import Issuer, sign_leaf

__all__ = ["SelfServing"]

log = logging.getLogger("meshlet.identity.serving")

_RENEW_AT = 0.7


class SelfServing:
    """Keeps ``<directory>/tls.crt`` (leaf + issuer) and ``tls.key`` current."""

    def __init__(
        self,
        directory: Path,
        identity: str,
        *,
        lifetime: datetime.timedelta,
        clock_skew: datetime.timedelta,
    ) -> None:
        self.directory = directory
        self.identity = identity
        self.lifetime = lifetime
        self.clock_skew = clock_skew
        self.cert_file = directory / "tls.crt"
        self.key_file = directory / "tls.key"
        self._renew_after: datetime.datetime | None = None

    def due(self, now: datetime.datetime) -> bool:
        return self._renew_after is None or now >= self._renew_after

    def issue(self, issuer: Issuer, now: datetime.datetime) -> None:
        """Sign and write a fresh serving pair (key first, both swapped in atomically)."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = sign_leaf(
            issuer,
            key.public_key(),
            self.identity,
            now=now,
            lifetime=self.lifetime,
            clock_skew=self.clock_skew,
        )
        chain = leaf.public_bytes(serialization.Encoding.PEM) + issuer.certificate.public_bytes(
            serialization.Encoding.PEM
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp_key = self.directory / "tls.key.tmp"
        fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        tmp_cert = self.directory / "tls.crt.tmp"
        tmp_cert.write_bytes(chain)
        os.replace(tmp_key, self.key_file)
        os.replace(tmp_cert, self.cert_file)
        lifetime = leaf.not_valid_after_utc - now
        self._renew_after = now + lifetime * _RENEW_AT
        log.info(
            "issued the service's own serving certificate for %s, valid until %s",
            self.identity,
            leaf.not_valid_after_utc.isoformat(),
        )
