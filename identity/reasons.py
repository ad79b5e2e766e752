"""Every reason the identity service refuses, as a stable slug with its HTTP status and sentence.

Slugs are metric labels (``identity_refusals_total{reason=...}``) and the ``reason`` field of a
refusal's JSON body; the sentence is for logs and people. Add a slug here before returning it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["REASONS", "Reason", "describe", "status_for"]


@dataclass(frozen=True, slots=True)
class Reason:
    status: int
    sentence: str


REASONS: Final[dict[str, Reason]] = {
    # The request itself.
    "body_too_large": Reason(413, "the request body is larger than the service accepts"),
    "body_malformed": Reason(400, "the body must be a JSON object with 'identity' and 'csr'"),
    "identity_malformed": Reason(400, "the requested identity is not a valid DNS name"),
    # The certificate signing request.
    "csr_too_large": Reason(400, "the CSR is larger than the service accepts"),
    "csr_malformed": Reason(400, "the CSR is not a PEM or DER PKCS#10 request"),
    "csr_bad_signature": Reason(400, "the CSR's signature does not verify with its own key"),
    "csr_missing_san": Reason(400, "the CSR has no DNS subject alternative name"),
    "csr_extra_sans": Reason(400, "the CSR has more than one subject alternative name"),
    "csr_forbidden_san": Reason(400, "the CSR has an email, IP, URI or other non-DNS SAN"),
    "csr_san_mismatch": Reason(400, "the CSR's DNS SAN is not the requested identity"),
    "csr_common_name_mismatch": Reason(
        400, "the CSR's common name is neither empty nor the identity"
    ),
    "csr_requests_ca": Reason(400, "the CSR asks for a CA certificate (basicConstraints CA:TRUE)"),
    "csr_key_unsupported": Reason(
        400, "the CSR's key is neither ECDSA P-256 nor RSA up to 8192 bits"
    ),
    "csr_key_too_weak": Reason(400, "the CSR's RSA key is shorter than 2048 bits"),
    # The ServiceAccount token.
    "token_missing": Reason(401, "no 'Authorization: Bearer <token>' header"),
    "token_invalid": Reason(403, "the token was not authenticated"),
    "token_wrong_audience": Reason(403, "the token is not meant for identity.meshlet.io"),
    "token_not_serviceaccount": Reason(403, "the token does not belong to a ServiceAccount"),
    "token_review_unavailable": Reason(503, "the token could not be reviewed right now"),
    "identity_mismatch": Reason(403, "the token's ServiceAccount does not have that identity"),
    # Ours: an unexpected failure, logged by exception type (never a 500, never a token).
    "internal_error": Reason(503, "the service failed unexpectedly; retry later"),
    # The issuer.
    "issuer_unavailable": Reason(503, "the issuer is not loaded"),
    "issuer_not_ca": Reason(503, "the issuer certificate is not a CA"),
    "issuer_expired": Reason(503, "the issuer certificate has expired"),
    "issuer_not_yet_valid": Reason(503, "the issuer certificate is not valid yet"),
    "issuer_key_mismatch": Reason(503, "the issuer key does not match its certificate"),
    "issuer_not_chained": Reason(503, "the issuer is not signed by a valid trust anchor"),
}


def describe(slug: str) -> str:
    """The human sentence for ``slug``."""
    return REASONS[slug].sentence


def status_for(slug: str) -> int:
    """The HTTP status a refusal with ``slug`` is answered with."""
    return REASONS[slug].status
