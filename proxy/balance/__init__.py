"""Outbound load balancing, failure accrual and retries: sans-IO decision cores.

No Trio and no sockets here: the proxy passes ``now`` (``trio.current_time()``), discovery
snapshots, request methods/paths and response statuses in, and gets decisions out. Per request::

    destination.sync_endpoints(endpoint_view.current(), now)   # cheap when nothing changed
    destination.sync_profile(profile_view.current())
    attempts = destination.begin(method, path, now)             # route match + budget deposit
    while True:
        choice = attempts.pick(now)                             # Pick | NoEndpoint(reason)
        if isinstance(choice, NoEndpoint): 503, meshlet-proxy-error: choice.reason
        ... send to choice.endpoint, under attempts.deadline ...
        decision = attempts.finished(choice, now, status=status, grpc_status=grpc)
        if isinstance(decision, GiveUp): relay the last response; break

The parts (``Balancer``, ``RetryPolicy``, ``RouteTable``) are usable alone. See
docs/balancing.md for where the proxy calls each of these.
"""

from __future__ import annotations

from .balancer import Balancer, EndpointLike, EndpointStats, Key, NoEndpoint, Pick, key_of
from .budget import BudgetSettings, BudgetSettingsError, RetryBudget
from .destination import Attempts, Destination, EndpointSetLike, ProfileStateLike
from .outcome import Outcome
from .reasons import REASONS, describe
from .retry import GiveUp, Retry, RetryPolicy
from .routes import DEFAULT_ROUTE, ProfileError, ResponseClass, Route, RouteTable, classify
from .settings import BalanceSettings, BalanceSettingsError

__all__ = [
    "DEFAULT_ROUTE",
    "REASONS",
    "Attempts",
    "BalanceSettings",
    "BalanceSettingsError",
    "Balancer",
    "BudgetSettings",
    "BudgetSettingsError",
    "Destination",
    "EndpointLike",
    "EndpointSetLike",
    "EndpointStats",
    "GiveUp",
    "Key",
    "NoEndpoint",
    "Outcome",
    "Pick",
    "ProfileError",
    "ProfileStateLike",
    "ResponseClass",
    "Retry",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "RouteTable",
    "classify",
    "describe",
    "key_of",
]
