"""Service discovery for the proxy: endpoint and profile streams from the destination service.

Trio only. The proxy's balancer uses it as::

    async with DiscoveryClient(DiscoverySettings.from_environ(os.environ)) as discovery:
        view = await discovery.endpoints("web.shop.svc.cluster.local:8080")
        endpoints = view.current().endpoints          # never blocks; survives disconnections
        update = await view.wait_changed(view.current().version)

See docs/destination.md for the wire format.
"""

from __future__ import annotations

from .client import DiscoveryClient, EndpointView, ProfileView, View
from .settings import DiscoverySettings, DiscoverySettingsError
from .state import Endpoint, EndpointSet, ProfileState, ServerProtocolError

__all__ = [
    "DiscoveryClient",
    "DiscoverySettings",
    "DiscoverySettingsError",
    "Endpoint",
    "EndpointSet",
    "EndpointView",
    "ProfileState",
    "ProfileView",
    "ServerProtocolError",
    "View",
]
