"""Suite-wide test configuration.

Tests marked ``root`` build network namespaces and iptables rules; without root they skip with
the reason, so a developer's unprivileged run is honest about what it did not cover. CI runs as
root, so there they run.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


def _let_pod_users_reach_the_interpreter() -> None:
    """Proxies and probes in test pods run as other users (UID 2102, nobody) with this virtual
    environment's interpreter; tox creates ``.tox`` with mode 0700, which would lock them out.
    Add only the search bit (o+x), only on the project's own directories between the checkout
    and the environment."""
    prefix = Path(sys.prefix).resolve()
    if REPOSITORY not in prefix.parents:
        return
    for directory in [prefix, *prefix.parents]:
        if directory == REPOSITORY:
            break
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0:
        _let_pod_users_reach_the_interpreter()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="needs root for network namespaces and iptables (CI runs as root)"
    )
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
