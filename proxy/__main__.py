"""``meshlet-proxy``: the sidecar proxy process, configured only by ``MESHLET_PROXY_*`` variables.

Nurseries by lifetime: the process nursery holds the admin server and the signal watcher; inside
it a data-plane scope holds the inbound and outbound listeners, each with its connections. On
SIGTERM (or ``POST /shutdown``) the listeners stop accepting, idle keep-alive connections close,
in-flight requests finish, and the data plane gets ``MESHLET_PROXY_SHUTDOWN_GRACE_PERIOD`` to do so
before it is cancelled; then the admin server stops and the process exits 0. A second signal
exits at once.

The process nursery also runs, next to the admin server, the tap server (``proxy/tapserver.py``,
when ``main`` starts it) and, when ``MESHLET_PROXY_IDENTITY_*`` is configured, the identity
client (``proxy/tlsglue.py``): ``/ready`` stays 503 until its first certificate while ``/live``
is 200 throughout. Without identity variables nothing of it runs and the proxy behaves exactly
as without a mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import signal
import sys
from typing import NamedTuple

import trio

from meshlet.logs import configure_logging
from proxy.admin import serve_admin
from proxy.context import (
    INBOUND,
    ORIGINAL_DESTINATION,
    OUTBOUND,
    EndpointPicker,
    Lifecycle,
    ProxyContext,
)
from proxy.discovery import DiscoveryClient, DiscoverySettings, DiscoverySettingsError
from proxy.metrics import Metrics
from proxy.outbound import Outbound
from proxy.server import Resolver, default_resolver, serve_proxy
from proxy.settings import (
    PREFIX,
    ProxySettings,
    SettingsError,
    load_settings,
    unknown_variables,
)
from proxy.tapserver import TapSettings, load_tap_settings, serve_tap
from proxy.tlsglue import MeshTls, load_mesh_tls

__all__ = [
    "ProxyAddresses",
    "check_policy",
    "load_discovery",
    "main",
    "run_proxy",
    "set_up_logging",
]

log = logging.getLogger("proxy")
_USAGE = (
    "usage: meshlet-proxy\n\n"
    "The meshlet sidecar proxy. It takes no arguments: it is configured only by MESHLET_PROXY_*\n"
    "environment variables (listen ports, identity, discovery, policy, timeouts), which the\n"
    "webhook sets when it injects a pod. See docs/proxy.md for every variable."
)
_LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


class ProxyAddresses(NamedTuple):
    """Where the process listens (ports resolved when configured as 0)."""

    admin: tuple[str, int]
    inbound: tuple[str, int]
    outbound: tuple[str, int]
    tap: tuple[str, int] | None = None
    """``None`` when the tap server was not started (``run_proxy(tap=None)``)."""


async def run_proxy(
    settings: ProxySettings,
    *,
    resolver: Resolver = default_resolver,
    picker: EndpointPicker = ORIGINAL_DESTINATION,
    context: ProxyContext | None = None,
    mesh: MeshTls | None = None,
    tap: TapSettings | None = None,
    discovery: DiscoverySettings | None = None,
    task_status: trio.TaskStatus[ProxyAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the whole proxy until drained (SIGTERM, ``/shutdown``) or cancelled.

    ``resolver`` finds a connection's original destination (``SO_ORIGINAL_DST`` by default);
    tests on loopback pass a fixed one. ``picker`` chooses outbound endpoints (the original
    destination until discovery arrives). ``mesh`` is the process's mutual TLS
    (``load_mesh_tls``; identity off when ``None``), ``tap`` the tap server's settings (not
    started when ``None``). With ``discovery`` the process runs one ``DiscoveryClient`` and the
    outbound mesh client over it (``context.outbound``, connecting through ``mesh``); a context
    that already has an ``outbound`` (tests) gets it run the same way.
    """
    info = {
        "namespace": settings.pod_namespace,
        "pod": settings.pod_name,
        "workload": settings.workload or settings.pod_name,
    }
    context = context or ProxyContext(settings, Metrics(info), Lifecycle())
    mesh = mesh or MeshTls()
    async with contextlib.AsyncExitStack() as stack:
        if discovery is not None and context.outbound is None:
            client = await stack.enter_async_context(DiscoveryClient(discovery))
            outbound = Outbound(settings, client, connector=mesh.connect_endpoint)
            context = dataclasses.replace(context, outbound=outbound)
        await _run(settings, context, mesh, tap, resolver, picker, task_status)


async def _run(  # noqa: PLR0917 (run_proxy's arguments, passed on)
    settings: ProxySettings,
    context: ProxyContext,
    mesh: MeshTls,
    tap: TapSettings | None,
    resolver: Resolver,
    picker: EndpointPicker,
    task_status: trio.TaskStatus[ProxyAddresses],
) -> None:
    lifecycle = context.lifecycle
    async with trio.open_nursery() as process:
        admin = await process.start(functools.partial(serve_admin, context, mesh=mesh))
        tap_address = None
        if tap is not None:
            tls = None if mesh.identity is None else mesh.identity.tap_server_context
            serve = functools.partial(serve_tap, context.tap, tap, tls_context=tls)
            tap_address = await process.start(serve)
        process.start_soon(_watch_signals, lifecycle, process.cancel_scope)
        if mesh.identity is not None:
            log.info("identity %s: waiting for the first certificate", mesh.local_name)
            process.start_soon(mesh.identity.run)
        if context.outbound is not None:
            context.outbound.local_identity = mesh.enabled
            await process.start(context.outbound.run)
        with trio.CancelScope() as data_plane_scope:
            async with trio.open_nursery() as data_plane:
                inbound = await data_plane.start(
                    functools.partial(serve_proxy, INBOUND, context, resolver=resolver, mesh=mesh)
                )
                outbound = await data_plane.start(
                    functools.partial(
                        serve_proxy, OUTBOUND, context, resolver=resolver, picker=picker, mesh=mesh
                    )
                )
                log.info("listening")
                task_status.started(ProxyAddresses(admin, inbound, outbound, tap_address))
                await lifecycle.draining.wait()
                grace = settings.shutdown_grace_period
                log.info("draining: in-flight work has %gs to finish", grace)
                data_plane_scope.deadline = trio.current_time() + grace
        if data_plane_scope.cancelled_caught:
            log.warning("grace period over: closing the connections still open")
        else:
            log.info("drained")
        process.cancel_scope.cancel()


async def _watch_signals(lifecycle: Lifecycle, process: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if lifecycle.draining.is_set():
                log.warning("%s again: exiting now", signal.Signals(signum).name)
                process.cancel()
                return
            log.info("%s: shutting down gracefully", signal.Signals(signum).name)
            lifecycle.drain()


def set_up_logging(settings: ProxySettings) -> None:
    """The process's logging; h2 and hpack stay quiet below ``trace``."""
    configure_logging(settings.log_level, settings.log_format)
    # hpack logs every header it codes at debug level: that alone takes the proxy down to a few
    # hundred requests/s. Only ``trace`` lets it through.
    quiet = settings.log_level != "trace"
    for chatty in ("hpack", "h2"):
        logging.getLogger(chatty).setLevel(logging.INFO if quiet else logging.NOTSET)


def main(argv: list[str] | None = None, *, resolver: Resolver = default_resolver) -> int:
    """Entry point of the ``meshlet-proxy`` console script (``resolver``: see ``run_proxy``)."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["--help"], ["-h"]):
        print(_USAGE)
        return 0
    if args:
        print(
            "meshlet-proxy takes no arguments: it is configured by MESHLET_PROXY_* variables "
            "(see docs/proxy.md)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = load_settings(os.environ)
        tap = load_tap_settings(settings)
        mesh = load_mesh_tls(settings)
        check_policy(settings, mesh)
        discovery = load_discovery(settings)
    except SettingsError as exc:
        print(f"meshlet-proxy: {exc}", file=sys.stderr)
        return 2
    set_up_logging(settings)
    for name in unknown_variables(settings):
        log.warning("ignoring unknown variable %s", name)
    try:
        trio.run(
            functools.partial(
                run_proxy, settings, resolver=resolver, mesh=mesh, tap=tap, discovery=discovery
            )
        )
    except (OSError, BaseExceptionGroup) as exc:
        bind_error = _listen_error(exc)
        if bind_error is None:
            raise
        log.error("cannot listen: %s", bind_error)
        return 1
    return 0


def check_policy(settings: ProxySettings, mesh: MeshTls) -> None:
    """``SettingsError`` when the inbound policy requires client identities while this proxy
    has none configured: no client could ever be admitted, surely a mistake."""
    policy = settings.default_inbound_policy
    if policy.value.endswith("-authenticated") and not mesh.enabled:
        raise SettingsError(
            f"{PREFIX}DEFAULT_INBOUND_POLICY={policy.value} requires identity "
            f"({PREFIX}IDENTITY_*): without it no client can authenticate"
        )


def load_discovery(settings: ProxySettings) -> DiscoverySettings | None:
    """The discovery client's settings when ``MESHLET_PROXY_DESTINATION_*`` is configured (it
    also needs ``..._IDENTITY_TRUST_ANCHORS``); ``None`` without: no discovery, outbound
    connections go to their original destination. ``SettingsError`` names a bad variable."""
    if not any(suffix.startswith("DESTINATION_") for suffix in settings.extra):
        return None
    environ = {PREFIX + suffix: value for suffix, value in settings.extra.items()}
    try:
        return DiscoverySettings.from_environ(environ)
    except DiscoverySettingsError as exc:
        raise SettingsError(str(exc)) from None


def _listen_error(exc: BaseException) -> OSError | None:
    """The address-in-use/permission error inside ``exc`` (nurseries wrap it in groups)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _listen_error(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, OSError) and exc.errno in _LISTEN_ERRNOS:
        return exc
    return None


if __name__ == "__main__":
    sys.exit(main())
