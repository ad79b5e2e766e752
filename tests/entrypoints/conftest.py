"""The bad (and a few good) inputs every entry-point table refers to as ``{name}``."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from identity import cli as identity_cli
from meshlet.devcert import write_self_signed

REPOSITORY = Path(__file__).resolve().parents[2]

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
"""

_TEXT_FILES = {
    "empty.yaml": "",
    "bad.yaml": "kind: Deployment\nspec: [unclosed\n",
    "bad.json": '{"kind": "Pod", "metadata": ',
    "deep.yaml": "[" * 20000 + "]" * 20000,
    "scalar.yaml": "just a string\n",
    "configmap.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
    "list-items-not-list.yaml": "apiVersion: v1\nkind: List\nitems: 5\n",
    "list.yaml": "apiVersion: v1\nkind: List\nitems:\n  - " + DEPLOYMENT.replace("\n", "\n    "),
    "deployment.yaml": DEPLOYMENT,
    "annotations-list.yaml": DEPLOYMENT.replace("{labels: {app: web}}", "{annotations: [a, b]}"),
    "metadata-list.yaml": DEPLOYMENT.replace("metadata: {labels: {app: web}}", "metadata: [1, 2]"),
    "containers-string.yaml": DEPLOYMENT.replace("containers: [", "containers: 'x' #["),
    "notpem.crt": "this is not a certificate\n",
    "kubeconfig-bad.yaml": "apiVersion: v1\nkind: Config\nclusters: [unclosed\n",
}


@pytest.fixture(scope="session")
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound but never listens: connecting is refused, and no other
    process can take it while the tests run."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _identity_init(directory: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert identity_cli.main(["init", "--dir", str(directory)]) == 0


@pytest.fixture(scope="session")
def busy_port() -> Iterator[int]:
    """A 127.0.0.1 port something already listens on (it never accepts): a server told to
    listen there must say the port is in use."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture(scope="session")
def paths(
    tmp_path_factory: pytest.TempPathFactory, closed_port: int, busy_port: int
) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("entrypoints")
    for name, text in _TEXT_FILES.items():
        (tmp / name).write_text(text)
    (tmp / "binary.yaml").write_bytes(b"\x00\x01\xff\xfe\x80binary\x00" * 64)
    (tmp / "binary.crt").write_bytes(b"\x30\x82\x01\x0a\xff\x00" * 64)
    (tmp / "adir").mkdir()
    (tmp / "emptydir").mkdir()
    write_self_signed(tmp / "tls-a", ["localhost", "127.0.0.1"])
    write_self_signed(tmp / "tls-b", ["localhost", "127.0.0.1"])
    _identity_init(tmp / "pki")
    _identity_init(tmp / "pki-other")
    shutil.copytree(tmp / "pki", tmp / "pki-mismatch")
    shutil.copy(tmp / "pki-other" / "key.pem", tmp / "pki-mismatch" / "key.pem")
    shutil.copytree(tmp / "pki", tmp / "pki-notpem-anchors")
    (tmp / "pki-notpem-anchors" / "ca-bundle.crt").write_text("not a certificate\n")
    (tmp / "tokens").write_text("a-token shop/web\n")
    (tmp / "kubeconfig-refused.yaml").write_text(
        f"""\
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{closed_port}",
  insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: c, context: {{cluster: c, user: u}}}}]
current-context: c
"""
    )
    return {
        "tmp": str(tmp),
        "closed": str(closed_port),
        "busy": str(busy_port),
        "anchors_pem": (tmp / "pki" / "ca-bundle.crt").read_text(),
        "cluster": str(REPOSITORY / "webhook" / "examples" / "cluster.yaml"),
        "unresolvable": "a" * 64 + ".invalid",
    }
