"""Suite-wide test configuration.

Tests marked ``root`` build network namespaces and iptables rules; without root they skip with
the reason, so a developer's unprivileged run is honest about what it did not cover. CI runs as
root, so there they run.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="needs root for network namespaces and iptables (CI runs as root)"
    )
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
