"""Suite-wide test configuration.

Tests marked ``root`` build network namespaces and iptables rules; without root they skip with
the reason, so a developer's unprivileged run is honest about what it did not cover. CI runs as
root, so there they run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshlet.localmesh.programs import let_users_reach_interpreter

REPOSITORY = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0:
        # proxies and probes in test pods run as UID 2102 and nobody with this environment's
        # interpreter; tox makes .tox 0700
        let_users_reach_interpreter(REPOSITORY)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="needs root for network namespaces and iptables (CI runs as root)"
    )
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
