"""pytest fixtures over the harness; a suite's conftest.py re-exports the ones it uses."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.harness.node import Node

__all__ = ["node"]

_TOOLS = ("ip", "iptables", "iptables-nft-save", "setpriv", "nsenter", "sysctl")


@pytest.fixture
def node() -> Iterator[Node]:
    """A fresh node namespace with a bridge; pods and services are added by the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and iptables (CI runs as root)")
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    built = Node()
    try:
        yield built
    finally:
        built.close()
