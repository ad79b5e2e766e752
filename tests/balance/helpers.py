"""Endpoints as discovery builds them, for the balancer tests."""

from __future__ import annotations

import random
from types import MappingProxyType

from proxy.balance import Balancer, BalanceSettings, Key
from proxy.discovery import Endpoint


def endpoint(address: str, port: int = 8080, weight: int = 10_000) -> Endpoint:
    return Endpoint(address, port, weight, None, None, MappingProxyType({}))


def endpoints(*addresses: str) -> dict[Key, Endpoint]:
    return {(a, 8080): endpoint(a) for a in addresses}


def balancer(
    *addresses: str, seed: int = 1, settings: BalanceSettings | None = None
) -> Balancer[Endpoint]:
    b: Balancer[Endpoint] = Balancer(settings, rng=random.Random(seed))
    b.update(endpoints(*addresses), 0.0)
    return b
