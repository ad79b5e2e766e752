"""Mesh TLS: CPU cost of what mutual TLS adds per connection and per HTTP/2 request (no I/O).

* ``handshake mutual``: one TLS 1.3 handshake with the proxy's own contexts
  (``proxy.identity.tls``: ECDSA P-256 leaves under a two-level mesh CA, client certificate
  required and verified, hostname = identity), both ends in memory (``ssl.MemoryBIO``), plus the
  ``peer_identity`` checks both sides make. Reference: the same handshake without a client
  certificate (server-authenticated TLS, what any HTTPS client does).
* ``h2 request block``: the inbound HTTP/2 relay on one gRPC-style request HEADERS frame
  (``FrameScanner.feed``), forwarding bytes unchanged (no rewrite: the relay before mTLS) vs
  re-encoding with ``meshlet-client-id`` added (what every inbound request now costs).

Medians of 5 rounds, microseconds per handshake / per request block.

    python -m bench mesh_tls [--quick]
"""

from __future__ import annotations

import datetime
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import hpack
from cryptography.hazmat.primitives.asymmetric import ec

from identity.ca import Issuer, create_issuer, create_trust_anchor, sign_leaf
from identity.pemfiles import certificate_pem, private_key_pem
from proxy.h2relay import PREFACE, FrameScanner
from proxy.identity.tls import client_context, peer_identity, server_context
from proxy.mtls import inbound_request_headers

ROUNDS = 5
WEB = "web.shop.serviceaccount.identity.meshlet.cluster.local"
DB = "db.shop.serviceaccount.identity.meshlet.cluster.local"


def _timed(count: int, body: Callable[[int], None]) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        body(count)
        samples.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(samples)


def write_leaf(directory: Path, issuer: Issuer, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    leaf = sign_leaf(issuer, key.public_key(), name, now=now)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(certificate_pem(leaf, issuer.certificate))
    key_file.write_bytes(private_key_pem(key))
    return cert_file, key_file


def bench_issuer() -> tuple[Issuer, str]:
    """A day-long trust anchor and issuer, as the identity service would hold them, and the
    anchor's PEM."""
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    anchor = create_trust_anchor(name="root.bench", now=now, lifetime=day)
    ca = create_issuer(anchor, name="identity.bench", now=now, lifetime=day)
    issuer = Issuer(certificate=ca.certificate, key=ca.key, anchors=(anchor.certificate,))
    return issuer, certificate_pem(anchor.certificate).decode()


def _contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, str]:
    issuer, anchors_pem = bench_issuer()
    server = server_context(anchors_pem, *write_leaf(directory, issuer, DB))
    server.num_tickets = 0  # as the proxy's inbound side
    client = client_context(anchors_pem, *write_leaf(directory, issuer, WEB))
    return server, client, anchors_pem


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, *, mutual: bool) -> None:
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    client_side = client.wrap_bio(to_client, to_server, server_hostname=DB)
    done_client = done_server = False
    while not (done_client and done_server):
        if not done_client:
            try:
                client_side.do_handshake()
                done_client = True
            except ssl.SSLWantReadError:
                pass
        server_in.write(to_server.read())
        if not done_server:
            try:
                server_side.do_handshake()
                done_server = True
            except ssl.SSLWantReadError:
                pass
        to_client.write(server_out.read())
    # SSLObject has the getpeercert peer_identity reads (its overloads confuse the Protocol).
    if peer_identity(cast(Any, client_side)) != DB:
        raise AssertionError("the server identity was not verified")
    if mutual and peer_identity(cast(Any, server_side)) != WEB:
        raise AssertionError("the client identity was not verified")


def _handshakes(
    server: ssl.SSLContext, client: ssl.SSLContext, *, mutual: bool
) -> Callable[[int], None]:
    def body(count: int) -> None:
        for _ in range(count):
            _handshake(server, client, mutual=mutual)

    return body


def _request_block(count: int) -> list[bytes]:
    encoder = hpack.Encoder()  # a real client indexes: later blocks are mostly table references
    blocks = []
    for stream in range(count):
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"db.shop.svc.cluster.local:8080"),
            (b":path", b"/shop.Orders/Get"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"999m"),
            (b"user-agent", b"grpc-python/1.62"),
            (b"x-request-id", f"{stream:016x}".encode()),
        ]
        block = encoder.encode(headers)
        stream_id = 2 * stream + 1
        blocks.append(
            len(block).to_bytes(3, "big") + b"\x01\x04" + stream_id.to_bytes(4, "big") + block
        )
    return blocks


def _relay(count: int, *, rewrite: bool) -> Callable[[int], None]:
    blocks = _request_block(count)

    def client_id(headers: list[tuple[bytes, bytes]], starts: bool) -> list[tuple[bytes, bytes]]:
        return inbound_request_headers(headers, WEB if starts else None)

    def body(requests: int) -> None:
        scanner = FrameScanner(from_client=True, rewrite=client_id if rewrite else None)
        scanner.feed(PREFACE)
        for frame in blocks[:requests]:
            scanner.feed(frame)

    return body


def run(args: list[str]) -> None:
    quick = "--quick" in args
    handshakes = 40 if quick else 300
    requests = 2_000 if quick else 20_000
    with tempfile.TemporaryDirectory() as scratch:
        server, client, _ = _contexts(Path(scratch))
        one_way = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        one_way.minimum_version = ssl.TLSVersion.TLSv1_3
        one_way.load_cert_chain(Path(scratch) / f"{DB}.crt", Path(scratch) / f"{DB}.key")
        one_way.num_tickets = 0
        mutual = _timed(handshakes, _handshakes(server, client, mutual=True))
        plain = _timed(handshakes, _handshakes(one_way, client, mutual=False))
    print(f"handshake mutual (TLS 1.3, P-256, client cert)  {mutual:9.1f} us")
    print(f"reference: server-authenticated handshake        {plain:9.1f} us")
    forward = _timed(requests, _relay(requests, rewrite=False))
    rewritten = _timed(requests, _relay(requests, rewrite=True))
    print(f"h2 request block, forwarded unchanged           {forward:9.2f} us")
    print(f"h2 request block, re-encoded + meshlet-client-id {rewritten:9.2f} us")
