"""The loopback-only rule, tested from a real non-loopback source.

Two network namespaces made by the test, joined by a veth pair and linked to nothing else: the
tap server runs in one; a client in the other (a genuine remote peer) must get 403, while a
client on the server namespace's loopback gets the stream. A client in the server's namespace
connecting through its own veth address is not on loopback either, and is refused as well.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlet.names import workload_identity
from tests.harness.netns import Netns
from tests.identity.pki import make_ca, write_issuer_files
from tests.tap.conftest import MESHLET
from tests.tap.tappki import leaf_files

APP = str(Path(__file__).with_name("tap_app.py"))
REPO = str(Path(__file__).parents[2])
SERVER_IP, CLIENT_IP = "10.254.90.1", "10.254.90.2"
WEB = workload_identity("web", "shop")
DB = workload_identity("db", "shop")
ADMIN = workload_identity("admin", "kube-system")
REFUSED = "tap is only served to clients on loopback or with an authorized mesh identity (mTLS)\n"


@pytest.fixture
def namespaces() -> Iterator[tuple[Netns, Netns]]:
    server = Netns("tapsrv")
    try:
        client = Netns("tapcli")
    except BaseException:
        server.delete()
        raise
    try:
        server.iproute(
            "link", "add", "tap0", "type", "veth", "peer", "name", "tap1", "netns", client.name
        )
        server.iproute("addr", "add", f"{SERVER_IP}/30", "dev", "tap0")
        client.iproute("addr", "add", f"{CLIENT_IP}/30", "dev", "tap1")
        server.iproute("link", "set", "tap0", "up")
        client.iproute("link", "set", "tap1", "up")
        yield server, client
    finally:
        try:
            client.delete()
        finally:
            server.delete()


def curl(ns: Netns, url: str, *args: str) -> tuple[str, str]:
    done = ns.run_result(
        ["curl", "--silent", "--max-time", "5", "--write-out", "\n%{http_code}", *args, url],
        timeout=20,
    )
    body, _, code = done.stdout.rpartition("\n")
    return code, body


@pytest.mark.root
def test_only_loopback_clients_may_tap(namespaces: tuple[Netns, Netns]) -> None:
    server, client = namespaces
    app = server.spawn([sys.executable, APP, "0.0.0.0"], env={"PYTHONPATH": REPO})
    port = int(app.read_line(timeout=10).split()[1])
    server.wait_for_port(("127.0.0.1", port))

    code, body = curl(client, f"http://{SERVER_IP}:{port}/tap")
    assert (code, body) == ("403", REFUSED)

    code, body = curl(server, f"http://{SERVER_IP}:{port}/tap")  # own veth address
    assert (code, body) == ("403", REFUSED)

    # On loopback the stream flows (curl stops it after --max-time, hence status 200 and
    # a partial body; the events are whole lines).
    code, body = curl(server, f"http://127.0.0.1:{port}/tap", "-N", "--max-time", "1")
    assert code == "200"
    events = [json.loads(line) for line in body.splitlines() if line]
    assert events
    assert {event["path"] for event in events if event["event"] == "request"} == {"/synthetic"}


@pytest.mark.root
def test_remote_clients_tap_only_with_an_authorized_identity(
    namespaces: tuple[Netns, Netns], tmp_path: Path
) -> None:
    """From another namespace (never loopback): mTLS with an authorized identity streams; another
    identity, TLS without a client certificate and plaintext all get 403."""
    server, client = namespaces
    anchor, issuer = make_ca(datetime.datetime.now(datetime.UTC))
    anchors, _, _ = write_issuer_files(tmp_path / "pki", anchor, issuer)
    proxy_cert, proxy_key = leaf_files(tmp_path, anchor, issuer, DB)
    web_cert, web_key = leaf_files(tmp_path, anchor, issuer, WEB)
    admin_cert, admin_key = leaf_files(tmp_path, anchor, issuer, ADMIN)
    argv = [sys.executable, APP, "0.0.0.0", str(proxy_cert), str(proxy_key), str(anchors), WEB]
    app = server.spawn(argv, env={"PYTHONPATH": REPO})
    port = int(app.read_line(timeout=10).split()[1])
    server.wait_for_port(("127.0.0.1", port))
    address = f"{SERVER_IP}:{port}"

    def tap(cert: Path, key: Path) -> list[str]:
        return [MESHLET, "tap", address, "--cert", str(cert), "--key", str(key),
                "--cacert", str(anchors), "--identity", DB, "-o", "json"]  # fmt: skip

    streaming = client.spawn(tap(web_cert, web_key))
    try:
        record = json.loads(streaming.read_line(timeout=15))
        assert (record["event"], record["path"]) == ("request", "/synthetic")
    finally:
        streaming.stop()

    refused = client.run_result(tap(admin_cert, admin_key), timeout=20)
    assert refused.returncode == 1
    assert f"answered 403: {ADMIN} is not authorized to tap this proxy" in refused.stderr

    code, body = curl(client, f"https://{address}/tap", "--insecure")  # no client certificate
    assert (code, body) == ("403", REFUSED)
    code, body = curl(client, f"http://{address}/tap")
    assert (code, body) == ("403", REFUSED)
