"""The certify decision, without HTTP: identity + CSR + token in, a leaf or a refusal slug out.

Checks run cheapest first and the TokenReview (a network call) last before signing:
the issuer is usable; the identity is a DNS name; the CSR passes identity/csr.py; the token is
authenticated for our audience; its ServiceAccount maps to exactly the requested identity.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from identity.ca import sign_leaf
from identity.csr import check_csr, check_identity, csr_bytes_from_text
from identity.issuer import IssuerStore
from identity.settings import IdentitySettings
from identity.tokens import TokenReviewer, identity_for_username

__all__ = ["Authority", "Certified", "Refused"]


@dataclass(frozen=True, slots=True)
class Certified:
    leaf_pem: str
    chain_pem: list[str]
    valid_until: datetime.datetime

    def as_json(self) -> dict[str, object]:
        return {
            "leaf_certificate": self.leaf_pem,
            "intermediate_certificates": self.chain_pem,
            "valid_until": self.valid_until.isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


class Authority:
    """Signs leaves with the store's current issuer for callers the reviewer vouches for."""

    def __init__(
        self, *, settings: IdentitySettings, store: IssuerStore, reviewer: TokenReviewer
    ) -> None:
        self.settings = settings
        self.store = store
        self.reviewer = reviewer
        self._lifetime = datetime.timedelta(seconds=settings.leaf_lifetime)
        self._skew = datetime.timedelta(seconds=settings.clock_skew)

    async def certify(  # noqa: PLR0911 (one early return per check)
        self, *, identity: str, csr_text: str, token: str, now: datetime.datetime
    ) -> Certified | Refused:
        issuer = self.store.state.issuer
        if issuer is None:
            return Refused(self.store.state.problems[0])
        problems = check_identity(identity)
        if problems:
            return Refused(problems[0])
        data = csr_bytes_from_text(csr_text)
        if data is None:
            return Refused("csr_malformed")
        verdict = check_csr(data, identity)
        if verdict.public_key is None or verdict.reasons:
            return Refused(verdict.reasons[0])
        if not token:
            return Refused("token_missing")
        review = await self.reviewer.review(token)
        if review.username is None:
            return Refused(review.reason or "token_invalid")
        expected = identity_for_username(
            review.username,
            control_plane_ns=self.settings.control_plane_ns,
            trust_domain=self.settings.trust_domain,
        )
        if expected is None:
            return Refused("token_not_serviceaccount")
        if expected != identity:
            return Refused("identity_mismatch")
        # The issuer may have been swapped while the review was in flight: sign with the newest.
        issuer = self.store.state.issuer
        if issuer is None:
            return Refused(self.store.state.problems[0])
        leaf = sign_leaf(
            issuer,
            verdict.public_key,
            identity,
            now=now,
            lifetime=self._lifetime,
            clock_skew=self._skew,
        )
        return Certified(
            leaf_pem=leaf.public_bytes(serialization.Encoding.PEM).decode(),
            chain_pem=issuer.chain_pem(),
            valid_until=leaf.not_valid_after_utc,
        )
