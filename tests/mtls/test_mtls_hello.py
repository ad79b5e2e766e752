"""The ClientHello reader and the inbound decision, on real ClientHello bytes (no sockets)."""

from __future__ import annotations

import ssl

import pytest

from proxy.detect import Protocol, detect
from proxy.mtls import (
    ClientHello,
    InboundTlsAction,
    MalformedClientHello,
    decide_inbound_tls,
    describe,
    parse_client_hello,
)
from proxy.mtls.hello import MAX_CLIENT_HELLO

from .conftest import DB, WEB


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of Python's own TLS client (OpenSSL), as a peer proxy would send it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, at: int) -> bytes:
    """The same handshake message carried in two TLS records (legal, and seen in the wild)."""
    header, message = hello[:5], hello[5:]
    first, second = message[:at], message[at:]
    return (
        header[:3] + len(first).to_bytes(2, "big") + first
        + header[:3] + len(second).to_bytes(2, "big") + second
    )  # fmt: skip


def test_reads_sni_and_alpn_from_a_real_client_hello() -> None:
    hello = client_hello(WEB, ["h2", "http/1.1"])
    assert detect(hello[:6]) is Protocol.TLS
    assert parse_client_hello(hello) == ClientHello(server_name=WEB, alpn=("h2", "http/1.1"))


def test_without_sni() -> None:
    assert parse_client_hello(client_hello(None)) == ClientHello(server_name=None, alpn=())


def test_needs_more_bytes_until_the_whole_message_arrived() -> None:
    hello = client_hello(DB)
    for end in range(len(hello)):
        assert parse_client_hello(hello[:end]) is None, end
    assert parse_client_hello(hello + b"\x17\x03\x03junk after") == ClientHello(DB, ())


def test_a_message_split_over_two_records() -> None:
    joined = split_records(client_hello(DB, ["h2"]), at=40)
    assert parse_client_hello(joined[:60]) is None
    assert parse_client_hello(joined) == ClientHello(DB, ("h2",))


def test_upper_case_sni_and_a_trailing_dot_compare_as_the_name() -> None:
    hello = parse_client_hello(client_hello(DB.upper() + "."))
    assert hello is not None
    assert hello.server_name == DB


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x16\x03\x01\x00\x00", id="empty-record"),
        pytest.param(b"\x17\x03\x03\x00\x05hello", id="not-handshake"),
        pytest.param(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", id="server-hello"),
        pytest.param(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00", id="truncated-body"),
        pytest.param(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", id="declares-16MiB"),
    ],
)
def test_malformed_or_oversized_client_hellos(data: bytes) -> None:
    with pytest.raises(MalformedClientHello):
        parse_client_hello(data)


def test_a_client_hello_over_the_limit_is_refused_before_it_is_all_read() -> None:
    record = b"\x16\x03\x01" + (MAX_CLIENT_HELLO + 100).to_bytes(2, "big")
    with pytest.raises(MalformedClientHello, match="too large"):
        parse_client_hello(record + b"\x01")


@pytest.mark.parametrize(
    ("hello", "action", "reason"),
    [
        pytest.param(ClientHello(DB, ("h2",)), "terminate", "sni_is_local_identity", id="for-us"),
        pytest.param(ClientHello(DB.upper(), ()), "terminate", "sni_is_local_identity", id="case"),
        pytest.param(
            ClientHello(WEB, ()), "passthrough", "sni_not_local_identity", id="another-identity"
        ),
        pytest.param(
            ClientHello("shop.example.com", ()), "passthrough", "sni_not_local_identity", id="app"
        ),
        pytest.param(ClientHello(None, ()), "passthrough", "no_sni", id="no-sni"),
        pytest.param(None, "passthrough", "client_hello_malformed", id="unreadable"),
    ],
)
def test_inbound_decision(hello: ClientHello | None, action: str, reason: str) -> None:
    decision = decide_inbound_tls(hello, DB)
    assert (decision.action, decision.reason) == (InboundTlsAction(action), reason)
    assert describe(reason) != reason  # every reason has a sentence for logs
