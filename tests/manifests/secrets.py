"""The files `manifests/base/kustomization.yaml` reads, made for a test render."""

from __future__ import annotations

from pathlib import Path

from meshlet.devcert import write_self_signed


def write_install_files(directory: Path) -> None:
    for stem, names in [
        ("ca", ["identity.meshlet.cluster.local"]),
        ("issuer", ["identity.meshlet.cluster.local"]),
        ("webhook", ["meshlet-webhook.meshlet.svc"]),
        ("destination", ["meshlet-destination.meshlet.svc"]),
    ]:
        write_self_signed(directory, names, stem=stem)
