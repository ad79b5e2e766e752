"""The harness's node of namespaces: ``meshlet.localmesh.node`` (product code, also used by
``meshlet demo``)."""

from __future__ import annotations

from meshlet.localmesh.node import (
    BRIDGE_MAC,
    GATEWAY,
    POD_SUBNET,
    SERVICE_SUBNET,
    Node,
    Pod,
    Service,
)

__all__ = ["BRIDGE_MAC", "GATEWAY", "POD_SUBNET", "SERVICE_SUBNET", "Node", "Pod", "Service"]
