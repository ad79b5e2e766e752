"""Outbound load balancing, failure accrual and retries: sans-IO decision cores.

No Trio and no sockets here: the proxy passes ``now`` (``trio.current_time()``), discovery
snapshots, request methods/paths and response statuses in, and gets decisions out. Per request::

    route = table.match(method, path)              # RouteTable.from_profile(profile view)
    retries.started(now)                           # deposit into the retry budget
    attempt = 1
    while True:
        choice = balancer.pick(now)                # Pick | NoEndpoint(reason)
        if isinstance(choice, NoEndpoint): answer 503, meshlet-proxy-error: choice.reason
        ... send to choice.endpoint ...
        outcome = classify(route, status, grpc_status)   # or CONNECT_FAILED / CANCELLED
        balancer.finished(choice, now, outcome)
        decision = retries.decide(route, attempt, outcome, now, started=t0)
        if isinstance(decision, GiveUp): break
        attempt = decision.attempt

See docs/balancing.md for where the proxy calls each of these.
"""

from __future__ import annotations

from .balancer import Balancer, EndpointLike, EndpointStats, Key, NoEndpoint, Pick, key_of
from .budget import BudgetSettings, BudgetSettingsError, RetryBudget
from .outcome import Outcome
from .reasons import REASONS, describe
from .retry import GiveUp, Retry, RetryPolicy
from .routes import DEFAULT_ROUTE, ProfileError, ResponseClass, Route, RouteTable, classify
from .settings import BalanceSettings, BalanceSettingsError

__all__ = [
    "DEFAULT_ROUTE",
    "REASONS",
    "BalanceSettings",
    "BalanceSettingsError",
    "Balancer",
    "BudgetSettings",
    "BudgetSettingsError",
    "EndpointLike",
    "EndpointStats",
    "GiveUp",
    "Key",
    "NoEndpoint",
    "Outcome",
    "Pick",
    "ProfileError",
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
