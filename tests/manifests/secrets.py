"""The files `manifests/base/kustomization.yaml` reads, made as an operator makes them."""

from __future__ import annotations

from pathlib import Path

from meshlet.install import main as install_files


def write_install_files(directory: Path) -> None:
    assert install_files([str(directory)]) == 0
