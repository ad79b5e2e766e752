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
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from identity.ca import Issuer, sign_leaf
from identity.pemfiles import certificate_pem, private_key_pem, write_private, write_public

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
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.key_file, private_key_pem(key))
        write_public(self.cert_file, certificate_pem(leaf, issuer.certificate))
        lifetime = leaf.not_valid_after_utc - now
        self._renew_after = now + lifetime * _RENEW_AT
        log.info(
            "issued the service's own serving certificate for %s, valid until %s",
            self.identity,
            leaf.not_valid_after_utc.isoformat(),
        )
