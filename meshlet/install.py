"""``meshlet install-files DIR``: every file the kustomize base reads, in one command.

- ``DIR/``: the trust anchor and issuer, with their kustomization (``meshlet identity init``);
- ``DIR/destination/``: destination's serving certificate, issued by the issuer for destination's
  identity, so proxies verify it against the trust anchors (``meshlet identity issue``);
- ``DIR/webhook/``: the webhook's self-signed serving certificate for its Service's DNS names; the
  kustomization copies it into the webhook configuration's ``caBundle``.

The directory holds private keys: it is never committed (``manifests/base/secrets/`` is ignored
by git). Move ``ca.key``, the trust anchor's key, offline once the install is done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from identity import cli as identity_cli
from meshlet.devcert import write_self_signed
from meshlet.names import DEFAULT_CONTROL_PLANE_NS

__all__ = ["main", "webhook_dns_names"]

_TLS_FILES = ("tls.crt", "tls.key")


def webhook_dns_names(namespace: str) -> list[str]:
    """The names the API server may use to reach the webhook's Service."""
    return [
        f"meshlet-webhook.{namespace}.svc",
        f"meshlet-webhook.{namespace}.svc.cluster.local",
    ]


def _targets(directory: Path) -> list[Path]:
    """Every file the command writes: checked before the first is written, so an install never
    overwrites a key without ``--force``, not even half-way through."""
    identity = [
        identity_cli.ANCHOR_CERT,
        identity_cli.ANCHOR_KEY,
        identity_cli.ISSUER_CERT,
        identity_cli.ISSUER_KEY,
        "kustomization.yaml",
    ]
    return [
        *(directory / name for name in identity),
        *(directory / part / name for part in ("destination", "webhook") for name in _TLS_FILES),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="meshlet install-files", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dir", type=Path, help="e.g. manifests/base/secrets")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.add_argument(
        "--control-plane-ns", type=identity_cli.namespace_name, default=DEFAULT_CONTROL_PLANE_NS
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir
    existing = [str(path.relative_to(directory)) for path in _targets(directory) if path.exists()]
    if existing and not args.force:
        print(
            f"meshlet install-files: {directory} already holds {', '.join(existing)}; "
            "nothing was written (use --force to replace them)",
            file=sys.stderr,
        )
        return 1
    init = ["init", "--dir", str(directory), "--control-plane-ns", args.control_plane_ns]
    status = identity_cli.main([*init, "--force"] if args.force else init)
    if status:
        return status
    status = identity_cli.main(
        [
            "issue",
            "destination",
            "--dir",
            str(directory),
            "--out",
            str(directory / "destination"),
            "--control-plane-ns",
            args.control_plane_ns,
        ]
    )
    if status:
        return status
    try:
        files = write_self_signed(
            directory / "webhook", webhook_dns_names(args.control_plane_ns), stem="tls"
        )
    except OSError as error:
        print(
            f"meshlet install-files: cannot write {directory / 'webhook'}: {error}", file=sys.stderr
        )
        return 1
    print(f"{files.cert}, {files.key}: webhook serving certificate (self-signed)")
    print("next: kubectl apply -k manifests/overlays/default")
    print(f"then move {directory / 'ca.key'} (the trust anchor's key) offline")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
