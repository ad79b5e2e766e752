"""Tap authorized by mesh identity: a proxy certified by a real ``meshlet-identity`` serves its
tap over mTLS (``IdentityClient.tap_server_context``) to the identities it lists; ``meshlet
tap --cert/--key/--cacert/--identity`` is the client, as a subprocess.

(The same from another network namespace, where the loopback rule does not help, is
``test_tap_netns.py``.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from proxy.settings import Address
from proxy.tap import TapHub
from proxy.tapserver import TapSettings, serve_tap
from tests.mtls.conftest import ADMIN, DB, WEB, Identity, identity
from tests.tap.conftest import MESHLET, RunningTap
from tests.tap.tappki import leaf_files

pytestmark = pytest.mark.trio
__all__ = ["identity"]  # the fixture, used by name


@dataclass
class TlsTap:
    tap: RunningTap
    anchors: Path
    web: tuple[Path, Path]
    admin: tuple[Path, Path]

    def args(self, who: tuple[Path, Path], *extra: str) -> list[str]:
        cert, key = who
        return [MESHLET, "tap", self.tap.address, "--cert", str(cert), "--key", str(key),
                "--cacert", str(self.anchors), *extra]  # fmt: skip


@pytest.fixture
async def tls_tap(identity: Identity, tmp_path: Path, nursery: trio.Nursery) -> TlsTap:
    """The tap of a proxy whose identity is ``db``, authorizing ``web`` only."""
    server = identity.client(tmp_path, DB, "tok-db")
    nursery.start_soon(server.run)
    with trio.fail_after(20):
        await server.ready.wait()
    hub = TapHub()
    settings = TapSettings(listen=Address("127.0.0.1", 0), authorized_identities=frozenset({WEB}))
    _, port = await nursery.start(
        lambda task_status: serve_tap(
            hub, settings, tls_context=server.tap_server_context, task_status=task_status
        )
    )
    pki = identity.pki
    return TlsTap(
        RunningTap(hub, port),
        pki.anchors_file,
        leaf_files(tmp_path / "clients", pki.anchor, pki.issuer, WEB),
        leaf_files(tmp_path / "clients", pki.anchor, pki.issuer, ADMIN),
    )


async def _run(argv: list[str]) -> tuple[int, str]:
    with trio.fail_after(20):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stderr.decode()


async def test_authorized_identity_streams(tls_tap: TlsTap, spawn: Any) -> None:
    _, lines = await spawn(tls_tap.args(tls_tap.web, "--identity", DB, "-o", "json"))
    await tls_tap.tap.wait_subscribers()
    tls_tap.tap.exchange(1, path=b"/over/mtls")
    record = json.loads(await lines.next())
    assert (record["event"], record["path"]) == ("request", "/over/mtls")


async def test_another_identity_gets_403(tls_tap: TlsTap) -> None:
    status, stderr = await _run(tls_tap.args(tls_tap.admin, "--identity", DB))
    assert status == 1
    assert stderr == (
        f"meshlet tap: {tls_tap.tap.address} answered 403: {ADMIN} is not authorized to tap "
        "this proxy (MESHLET_PROXY_TAP_AUTHORIZED_IDENTITIES)\n"
    )
    assert not tls_tap.tap.hub.active


async def test_the_proxy_must_carry_the_expected_identity(tls_tap: TlsTap) -> None:
    status, stderr = await _run(tls_tap.args(tls_tap.web, "--identity", WEB))
    assert status == 1
    assert "certificate is not trusted: Hostname mismatch" in stderr, stderr


async def test_tls_without_a_client_certificate_on_loopback_is_a_loopback_client(
    tls_tap: TlsTap,
) -> None:
    """No certificate: judged by address, like plaintext (loopback may tap)."""
    done = await trio.run_process(
        ["curl", "--silent", "--insecure", "--max-time", "1", "-N",
         "--write-out", "\n%{http_code}", f"https://{tls_tap.tap.address}/tap"],
        capture_stdout=True,
        check=False,
    )  # fmt: skip
    assert done.stdout.decode().rpartition("\n")[2] == "200"


async def test_incomplete_tls_options_are_refused(tls_tap: TlsTap) -> None:
    status, stderr = await _run([MESHLET, "tap", tls_tap.tap.address, "--cert", "x.pem"])
    assert (status, stderr) == (1, "meshlet tap: --cert, --key and --cacert go together (mTLS)\n")
