"""Meshed pods: meshlet-proxy-init's rules plus meshlet-proxy running as UID 2102.

``mesh_pod(node, name, log_dir)`` does what the injector's patch does to a pod: run the init
container (``meshlet-proxy-init``), then start the sidecar (``meshlet-proxy`` as UID 2102,
configured only by ``MESHLET_PROXY_*`` variables, log level info unless ``env`` says
otherwise) and wait until its admin ``/ready`` answers
200. ``scrape(pod)`` reads its ``/metrics`` into ``Samples``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshlet.localmesh import grpc_app
from meshlet.localmesh.programs import PROXY, http_get, start_program, wait_proxy_ready
from meshlet.names import PROXY_ADMIN_PORT, PROXY_UID
from tests.harness.netns import HarnessError, Netns, Process
from tests.harness.node import Node, Pod
from tests.harness.programs import PYTHON, install_proxy_init

__all__ = [
    "APPS",
    "GRPC_APP",
    "WS_APP",
    "PROXY",
    "MeshedPod",
    "Samples",
    "http_get",
    "mesh_pod",
    "scrape",
    "start_app",
    "start_program",
]

APPS: Final = str(Path(__file__).with_name("apps.py"))
GRPC_APP: Final = str(grpc_app.__file__)
WS_APP: Final = str(Path(__file__).with_name("ws_app.py"))
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class MeshedPod:
    pod: Pod
    proxy: Process


def mesh_pod(
    node: Node,
    name: str,
    log_dir: Path,
    *,
    init_flags: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> MeshedPod:
    """A pod with the init rules and a ready meshlet-proxy (its log in ``log_dir``)."""
    pod = node.add_pod(name)
    install_proxy_init(pod, *init_flags)
    variables = {
        "MESHLET_PROXY_POD_NAME": name,
        "MESHLET_PROXY_POD_NAMESPACE": "default",
        "MESHLET_PROXY_POD_IP": pod.ip,
        "MESHLET_PROXY_LOG_LEVEL": "info",
        **(env or {}),
    }
    log_path = log_dir / f"proxy-{name}.log"
    proxy = pod.spawn(
        [PROXY],
        uid=PROXY_UID,
        env=variables,
        capture=False,
        log_path=log_path,
        label=f"meshlet-proxy in {name}",
    )
    _wait_ready(pod, proxy)
    return MeshedPod(pod, proxy)


def start_app(pod: Netns, kind: str, port: int) -> Process:
    """Start ``apps.py <kind> <port>`` in ``pod`` and wait for its ``ready`` line."""
    return start_program(pod, [PYTHON, APPS, kind, str(port)])


class Samples:
    """Prometheus text samples; ``total(name, **labels)`` sums the series that match."""

    def __init__(self, text: str) -> None:
        self.series: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            if match is None:
                raise ValueError(f"not a Prometheus sample: {line!r}")
            name, labels, value = match.groups()
            self.series.append((name, dict(_LABEL.findall(labels or "")), float(value)))

    def total(self, name: str, **labels: str) -> float:
        return sum(
            value
            for series, have, value in self.series
            if series == name and all(have.get(key) == want for key, want in labels.items())
        )

    def names(self) -> set[str]:
        return {name for name, _, _ in self.series}


def scrape(pod: Netns) -> Samples:
    """The proxy's ``/metrics`` in ``pod`` (admin port, from inside the pod)."""
    status, body = http_get(pod, ("127.0.0.1", PROXY_ADMIN_PORT), "/metrics")
    if status != 200:
        raise HarnessError(f"/metrics answered {status}")
    return Samples(body.decode())


def _wait_ready(pod: Pod, proxy: Process, timeout: float = 15.0) -> None:
    wait_proxy_ready(pod, proxy, time.monotonic() + timeout)
