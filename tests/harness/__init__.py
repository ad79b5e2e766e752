"""The end-to-end harness: a "node" of network namespaces with pods, Services and processes.

Use it through the pytest fixtures in ``tests.harness.fixtures`` (re-exported by the
``conftest.py`` of each suite that needs it), or directly::

    with Node() as node:
        server = node.add_pod("server")
        client = node.add_pod("client")
        web = node.add_service("web", 80, [server], target_port=8080)
        server.spawn([...]).read_line()        # wait for "ready"
        sock = client.connect((web.vip, web.port))

Everything is created inside namespaces named ``mlt-<pid>-<n>-<role>`` and removed on exit
(processes first, by PID), even when the test fails. Root is required; see ``needs_root``.
"""

from __future__ import annotations

from tests.harness.netns import HarnessError, Netns, Process, run
from tests.harness.node import GATEWAY, POD_SUBNET, SERVICE_SUBNET, Node, Pod, Service
from tests.harness.programs import (
    PROXY_INIT,
    PYTHON,
    REPORTER,
    ask,
    ask_here,
    install_proxy_init,
    start_reporter,
)

__all__ = [
    "GATEWAY",
    "POD_SUBNET",
    "PROXY_INIT",
    "PYTHON",
    "REPORTER",
    "SERVICE_SUBNET",
    "HarnessError",
    "Netns",
    "Node",
    "Pod",
    "Process",
    "Service",
    "ask",
    "ask_here",
    "install_proxy_init",
    "run",
    "start_reporter",
]
