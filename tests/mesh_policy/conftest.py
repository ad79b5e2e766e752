"""The mesh_tls fixtures: a real ``meshlet-identity`` and in-process proxies on loopback."""

from __future__ import annotations

from tests.mesh_tls.conftest import (
    app_port,
    h2_app,
    identity_service,
    pki,
    start_mesh_proxy,
)

__all__ = ["app_port", "h2_app", "identity_service", "pki", "start_mesh_proxy"]
