"""The request-path helpers (client-id header, TLS labels), settings and error naming."""

from __future__ import annotations

import ssl

import pytest
import trio

from proxy.errors import ClientError, ProxyConfigError, ProxyError, UpstreamError
from proxy.metrics import TLS_DISABLED
from proxy.mtls import (
    CLIENT_ID_HEADER,
    MtlsSettings,
    NoTlsReason,
    TlsLabels,
    inbound_failure,
    inbound_request_headers,
    outbound_failure,
    strip_client_id,
)
from proxy.mtls.errors import (
    ClientTlsHandshakeFailed,
    MeshTlsError,
    NoClientCertificate,
    NoLocalIdentity,
    PeerIdentityMismatch,
    TlsHandshakeFailed,
    TransportHeaderError,
    UntrustedClient,
    UntrustedPeer,
)
from proxy.settings import SettingsError, load_settings
from proxy.tlsglue import NO_TLS_FROM_REMOTE

from .conftest import ADMIN, DB, WEB

HEADERS = [(b"host", b"db"), (b"meshlet-client-id", ADMIN.encode()), (b"accept", b"*/*")]


def test_spoofed_client_id_is_stripped_whatever_its_case() -> None:
    headers = [*HEADERS, (b"Meshlet-Client-ID", b"forged")]
    assert strip_client_id(headers) == [(b"host", b"db"), (b"accept", b"*/*")]


def test_inbound_headers_carry_only_the_proven_identity() -> None:
    assert inbound_request_headers(HEADERS, WEB) == [
        (b"host", b"db"),
        (b"accept", b"*/*"),
        (CLIENT_ID_HEADER, WEB.encode()),
    ]
    assert inbound_request_headers(HEADERS, None) == [(b"host", b"db"), (b"accept", b"*/*")]


def test_tls_labels() -> None:
    assert TlsLabels.inbound_meshed(WEB).text == f'tls="true",client_id="{WEB}"'
    assert TlsLabels.outbound_meshed(DB).text == f'tls="true",server_id="{DB}"'
    assert (
        TlsLabels.plaintext(NoTlsReason.NO_TLS_FROM_REMOTE).text
        == 'tls="no_identity",no_tls_reason="no_tls_from_remote"'
    )
    assert TlsLabels.inbound_meshed('a"b\\c').text == 'tls="true",client_id="a\\"b\\\\c"'


def test_settings_follow_the_proxy_settings() -> None:
    settings = load_settings(
        {
            "MESHLET_PROXY_OUTBOUND_CONNECT_TIMEOUT": "250ms",
            "MESHLET_PROXY_DETECT_TIMEOUT": "3s",
            "MESHLET_PROXY_IDENTITY_WAIT_TIMEOUT": "2s",
        }
    )
    assert MtlsSettings.from_proxy_settings(settings) == MtlsSettings(
        connect_timeout=0.25, handshake_timeout=3.0, identity_wait=2.0
    )
    assert MtlsSettings.from_proxy_settings(load_settings({})).identity_wait == 0.0
    bad = load_settings({"MESHLET_PROXY_IDENTITY_WAIT_TIMEOUT": "soon"})
    with pytest.raises(SettingsError, match="MESHLET_PROXY_IDENTITY_WAIT_TIMEOUT"):
        MtlsSettings.from_proxy_settings(bad)


def _verify_error(code: int, message: str) -> trio.BrokenResourceError:
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_code, cause.verify_message = code, message
    error = trio.BrokenResourceError()
    error.__cause__ = cause
    return error


def _ssl_error(reason: str) -> trio.BrokenResourceError:
    cause = ssl.SSLError(1, reason)
    cause.reason = reason
    error = trio.BrokenResourceError()
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "slug"),
    [
        pytest.param(_verify_error(62, "Hostname mismatch"), "identity_mismatch", id="hostname"),
        pytest.param(_verify_error(20, "unable to get local issuer"), "untrusted_peer", id="ca"),
        pytest.param(_verify_error(10, "certificate has expired"), "untrusted_peer", id="expired"),
        pytest.param(_ssl_error("WRONG_VERSION_NUMBER"), "tls_handshake_failed", id="not-tls"),
        pytest.param(trio.BrokenResourceError(), "tls_handshake_failed", id="closed"),
        pytest.param(ConnectionResetError(104, "reset"), "tls_handshake_failed", id="reset"),
    ],
)
def test_outbound_failures_are_the_peers_fault_and_named(error: BaseException, slug: str) -> None:
    failure = outbound_failure(error, DB, "10.0.0.1:8080")
    assert isinstance(failure, UpstreamError)
    assert failure.slug == slug
    assert "10.0.0.1:8080" in str(failure)


@pytest.mark.parametrize(
    ("error", "slug"),
    [
        pytest.param(
            _ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_client_certificate", id="no-cert"
        ),
        pytest.param(_verify_error(20, "unable to get local issuer"), "untrusted_peer", id="ca"),
        pytest.param(_ssl_error("NO_SHARED_CIPHER"), "tls_handshake_failed", id="cipher"),
        pytest.param(trio.BrokenResourceError(), "tls_handshake_failed", id="closed"),
    ],
)
def test_inbound_failures_are_the_clients_fault_and_named(error: BaseException, slug: str) -> None:
    failure = inbound_failure(error, "10.0.0.2:41000")
    assert isinstance(failure, ClientError)
    assert failure.slug == slug


def test_no_local_identity_is_ours_and_transient() -> None:
    assert issubclass(NoLocalIdentity, ProxyConfigError)
    assert (NoLocalIdentity.slug, NoLocalIdentity.status) == ("no_local_identity", 503)


def test_one_definition_of_each_plaintext_label() -> None:
    assert TlsLabels.plaintext(NoTlsReason.NO_TLS_FROM_REMOTE).text == NO_TLS_FROM_REMOTE
    assert TlsLabels.plaintext(NoTlsReason.DISABLED).text == TLS_DISABLED
    assert NoTlsReason.NO_TLS_FROM_REMOTE.value == "no_tls_from_remote"  # Linkerd's name


@pytest.mark.parametrize(
    ("error", "slug", "side", "status"),
    [
        (TlsHandshakeFailed, "tls_handshake_failed", UpstreamError, 502),
        (ClientTlsHandshakeFailed, "tls_handshake_failed", ClientError, 400),
        (UntrustedPeer, "untrusted_peer", UpstreamError, 502),
        (UntrustedClient, "untrusted_peer", ClientError, 400),
        (PeerIdentityMismatch, "identity_mismatch", UpstreamError, 502),
        (NoClientCertificate, "no_client_certificate", ClientError, 400),
        (TransportHeaderError, "transport_header_invalid", ClientError, 400),
        (NoLocalIdentity, "no_local_identity", ProxyConfigError, 503),
    ],
)
def test_refusals_share_one_base(
    error: type[ProxyError], slug: str, side: type[ProxyError], status: int
) -> None:
    assert issubclass(error, MeshTlsError)
    assert issubclass(error, side)
    assert (error.slug, error.status) == (slug, status)
