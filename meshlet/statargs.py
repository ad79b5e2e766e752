"""The options ``meshlet stat`` and ``meshlet edges`` share: where to read, over what window."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from meshlet.durations import DurationError, format_duration, parse_duration
from meshlet.metricsource import (
    AdminTarget,
    OptionError,
    PodWindow,
    PrometheusClient,
    parse_admin_target,
    scrape_window,
)

__all__ = [
    "ADMIN_WINDOW",
    "KINDS",
    "MAX_WINDOW",
    "PROMETHEUS_WINDOW",
    "Source",
    "add_source_arguments",
    "resolve_source",
    "window_text",
]

ADMIN_WINDOW: Final = 10.0
"""Scraping admin ports, the command waits out the window: 10s is long enough for a rate."""
PROMETHEUS_WINDOW: Final = 60.0
"""Linkerd's default; ``increase()`` needs at least two scrapes (ours are 10s apart)."""
MAX_WINDOW: Final = 3600.0
KINDS: Final = ("deployment", "statefulset", "daemonset", "replicaset", "cronjob", "pod")
"""Workload labels our Prometheus overlay sets (pod labels ``meshlet.io/proxy-<kind>``)."""
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Source:
    """Resolved options: exactly one of admin targets or a Prometheus client."""

    targets: Sequence[AdminTarget]
    prometheus: PrometheusClient | None
    window: float
    timeout: float
    namespace: str
    kind: str

    def scrape(self, keep: Callable[[str], bool] | None = None) -> list[PodWindow]:
        return scrape_window(self.targets, self.window, self.timeout, keep)


def window_text(seconds: float) -> str:
    """A PromQL range: ``1m``, ``10s``, ``1500ms``."""
    return format_duration(seconds)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--admin",
        action="append",
        metavar="[NS/]NAME=HOST:PORT",
        help="a proxy's admin address (port 4191); repeat for each pod. Without NAME the "
        "workload comes from the proxy's meshlet_proxy_info gauge, else the address",
    )
    source.add_argument(
        "--prometheus", metavar="URL", help="a Prometheus server, e.g. http://127.0.0.1:9090"
    )
    parser.add_argument(
        "-t",
        "--window",
        metavar="DURATION",
        help=f"time window (default {format_duration(ADMIN_WINDOW)} with --admin, "
        f"{format_duration(PROMETHEUS_WINDOW)} with --prometheus)",
    )
    parser.add_argument("-n", "--namespace", default="", help="only workloads in this namespace")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="deployment",
        help="with --prometheus: the workload label to group by (default deployment)",
    )
    parser.add_argument(
        "--timeout", default="5s", metavar="DURATION", help="per HTTP request (default 5s)"
    )
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="table (default) or json"
    )


def _duration(option: str, text: str) -> float:
    try:
        seconds = parse_duration(text)
    except DurationError as error:
        raise OptionError(f"{option}: {error}") from None
    if not 0.001 <= seconds <= MAX_WINDOW:
        raise OptionError(
            f"{option} {text!r}: must be between 1ms and {format_duration(MAX_WINDOW)}"
        )
    return seconds


def resolve_source(args: argparse.Namespace) -> Source:
    if args.namespace and not _NAMESPACE.match(args.namespace):
        raise OptionError(f"--namespace {args.namespace!r} is not a Kubernetes namespace name")
    timeout = _duration("--timeout", args.timeout)
    default = PROMETHEUS_WINDOW if args.prometheus else ADMIN_WINDOW
    window = _duration("--window", args.window) if args.window else default
    if args.prometheus:
        if window < 1:
            raise OptionError("--window: Prometheus ranges shorter than 1s hold no samples")
        client = PrometheusClient(args.prometheus, timeout)
        return Source((), client, window, timeout, args.namespace, args.kind)
    targets = [parse_admin_target(text) for text in args.admin]
    addresses = [target.address for target in targets]
    if len(set(addresses)) != len(addresses):
        twice = sorted({a for a in addresses if addresses.count(a) > 1})
        raise OptionError(f"--admin {', '.join(twice)} given twice: its pod would count double")
    return Source(targets, None, window, timeout, args.namespace, args.kind)
