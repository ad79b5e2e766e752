"""The certify exchange without I/O: key and CSR, the HTTP/1.1 request (h11), the answer.

Theory of operation: ``CertifyExchange`` is one request on one connection. ``request_bytes()``
gives what to send; ``receive_data(chunk)`` is fed what arrives and returns the finished
``(status, body)`` once h11 has seen the whole response (``b""`` means the peer closed). Then
``accept_answer`` turns a 200 body into ``Certified`` after checking that the leaf is for our
key and our name and chains to the trust anchors, and any other status into ``CertifyRefused``.
The refresh schedule (70% of the remaining lifetime, clamped) is here too.

``build_csr`` and ``accept_answer`` need ``cryptography``, which they import when called: the
proxy calls them only in its short-lived worker process (``proxy/identity/keywork.py``), so the
proxy itself never loads that library (about 11 MB of RSS).
"""

from __future__ import annotations

import datetime
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "CertifyExchange",
    "CertifyRefused",
    "Certified",
    "IdentityClientError",
    "InvalidAnswer",
    "TransportError",
    "accept_answer",
    "build_csr",
    "refresh_delay",
]


class IdentityClientError(Exception):
    """Base of the client's errors; every one of them is retried with backoff."""


class TransportError(IdentityClientError):
    """Connecting, TLS, or the HTTP exchange failed (the network's or the service's fault)."""


class CertifyRefused(IdentityClientError):
    """The service answered with a refusal (its ``reason`` slug and sentence)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class InvalidAnswer(IdentityClientError):
    """The service answered 200 with something we must not use (the service's fault)."""


@dataclass(frozen=True, slots=True)
class Certified:
    """A verified certificate: the leaf and its intermediates as PEM, and its expiry."""

    pem: bytes
    valid_until: datetime.datetime

    def chain_pem(self) -> bytes:
        return self.pem

    @property
    def leaf(self) -> x509.Certificate:
        """The parsed leaf (loads ``cryptography``: for tests and tools, not the proxy)."""
        from cryptography import x509  # noqa: PLC0415 (kept out of the proxy process)

        return x509.load_pem_x509_certificate(self.pem)


def build_csr(key: ec.EllipticCurvePrivateKey, identity: str) -> str:
    """A PEM CSR whose only SAN is ``identity`` (and no subject, so no CN to disagree)."""
    from cryptography import x509  # noqa: PLC0415 (kept out of the proxy process)
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class CertifyExchange:
    """One ``POST /v1/certify`` over h11; bytes in, bytes out."""

    def __init__(
        self, *, host: str, identity: str, csr_pem: str, token: str, max_body: int
    ) -> None:
        self._connection = h11.Connection(h11.CLIENT)
        self._body = json.dumps({"identity": identity, "csr": csr_pem}).encode()
        self._headers = [
            ("Host", host),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self._body))),
            ("Authorization", f"Bearer {token}"),
            ("Connection", "close"),
        ]
        self._max_body = max_body
        self._status = 0
        self._chunks: list[bytes] = []
        self._size = 0

    def request_bytes(self) -> bytes:
        request = h11.Request(method="POST", target="/v1/certify", headers=self._headers)
        data = self._connection.send(request) or b""
        data += self._connection.send(h11.Data(data=self._body)) or b""
        return data + (self._connection.send(h11.EndOfMessage()) or b"")

    def receive_data(self, data: bytes) -> tuple[int, bytes] | None:
        """Feed what arrived; the response once complete, ``None`` while more is needed."""
        self._connection.receive_data(data)
        while True:
            try:
                event = self._connection.next_event()
            except h11.RemoteProtocolError as error:
                raise TransportError(f"the identity service spoke bad HTTP: {error}") from None
            if event is h11.NEED_DATA:
                if not data:
                    raise TransportError("the identity service closed the connection early")
                return None
            if isinstance(event, h11.Response):
                self._status = event.status_code
            elif isinstance(event, h11.Data):
                self._size += len(event.data)
                if self._size > self._max_body:
                    raise TransportError("the identity service's answer is too large")
                self._chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return self._status, b"".join(self._chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportError("the identity service closed the connection early")


def _chains(
    leaf: x509.Certificate, chain: list[x509.Certificate], anchors: list[x509.Certificate]
) -> bool:
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 (see build_csr)

    path = [leaf, *chain]
    try:
        for child, parent in itertools.pairwise(path):
            child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    top = path[-1]
    for anchor in anchors:
        try:
            top.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def accept_answer(
    status: int,
    body: bytes,
    *,
    key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey,
    identity: str,
    anchors: list[x509.Certificate],
) -> Certified:
    """The certificate in a 200 answer, verified; ``CertifyRefused`` / ``InvalidAnswer`` else.
    ``key`` is ours (the private key or just its public half)."""
    from cryptography import x509  # noqa: PLC0415 (see build_csr)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if status != 200:
        document = document if isinstance(document, dict) else {}
        raise CertifyRefused(
            status, str(document.get("reason", "unknown")), str(document.get("message", ""))[:200]
        )
    try:
        leaf = x509.load_pem_x509_certificate(document["leaf_certificate"].encode())
        chain = [
            x509.load_pem_x509_certificate(pem.encode())
            for pem in document["intermediate_certificates"]
        ]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (KeyError, TypeError, AttributeError, ValueError, x509.ExtensionNotFound):
        raise InvalidAnswer("the answer is not a certificate and its chain") from None
    if list(sans) != [x509.DNSName(identity)]:
        raise InvalidAnswer(f"the certificate is not for {identity}")
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if leaf.public_key() != public:
        raise InvalidAnswer("the certificate is not for our key")
    if not _chains(leaf, chain, anchors):
        raise InvalidAnswer("the certificate does not chain to the trust anchors")
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, *chain))
    return Certified(pem=pem, valid_until=leaf.not_valid_after_utc)


def refresh_delay(
    *,
    now: datetime.datetime,
    valid_until: datetime.datetime,
    fraction: float = 0.7,
    minimum: float = 10.0,
    maximum: float = 24 * 3600.0,
) -> float:
    """Seconds until renewal: ``fraction`` of the remaining lifetime, within [minimum, maximum]."""
    remaining = (valid_until - now).total_seconds()
    return min(max(remaining * fraction, minimum), maximum)
