"""``meshlet-webhook``: serve the injector over HTTPS (TLS 1.2+, certificate reloaded from disk).

Every flag sets the ``MESHLET_WEBHOOK_*`` variable of the same name (a flag wins over the
environment). Bad configuration ends the process with one line on stderr and exit status 2.

Locally, without a cluster or certificates::

    meshlet-webhook --listen 127.0.0.1:8443 --self-signed /tmp/meshlet-webhook \\
        --cluster webhook/examples/cluster.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from meshlet import __version__
from meshlet.devcert import write_self_signed
from meshlet.logs import configure_logging
from meshlet.tlsserve import ReloadingServerTLS, TLSFilesError, serve_app
from webhook.app import create_app
from webhook.kube import ClusterView, ClusterViewError, StaticClusterView
from webhook.settings import ENV_PREFIX, SettingsError, WebhookSettings, load_settings

if TYPE_CHECKING:
    from webhook.cabundle import CaBundleKeeper

__all__ = ["main"]

log = logging.getLogger("meshlet.webhook")

# flag -> MESHLET_WEBHOOK_<NAME>
_FLAGS = {
    "--listen": ("LISTEN_ADDR", "host:port to serve HTTPS on (default 0.0.0.0:8443)"),
    "--tls-cert": ("TLS_CERT_FILE", "serving certificate (PEM), reloaded when it changes"),
    "--tls-key": ("TLS_KEY_FILE", "serving key (PEM)"),
    "--cluster": ("CLUSTER", "'kubernetes' (default) or a YAML file of Namespaces (local runs)"),
    "--kubeconfig": ("KUBECONFIG_FILE", "kubeconfig to use instead of the in-cluster account"),
    "--ca-bundle-config": (
        "CA_BUNDLE_CONFIG",
        "MutatingWebhookConfiguration whose caBundle to keep in step with the served certificate",
    ),
    "--control-plane-namespace": ("CONTROL_PLANE_NS", "the control plane's namespace (meshlet)"),
    "--trust-domain": ("TRUST_DOMAIN", "identity trust domain (cluster.local)"),
    "--trust-anchors": ("TRUST_ANCHORS_FILE", "the mesh's trust anchors (PEM) for the proxies"),
    "--proxy-image": ("PROXY_IMAGE", "proxy image repository"),
    "--proxy-version": ("PROXY_VERSION", "proxy image tag"),
    "--log-level": ("LOG_LEVEL", "trace, debug, info, warn or error (info)"),
}


class _Usage(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlet-webhook",
        description="meshlet's sidecar injector: a mutating admission webhook over HTTPS.",
        epilog=f"Each flag can also be set as {ENV_PREFIX}<NAME>; see docs/webhook.md.",
    )
    for flag, (_, text) in _FLAGS.items():
        parser.add_argument(flag, help=text)
    parser.add_argument(
        "--self-signed",
        metavar="DIR",
        type=Path,
        help="serve DIR/tls.crt and DIR/tls.key, creating a self-signed pair there if missing "
        "(for local runs: curl --cacert DIR/tls.crt)",
    )
    parser.add_argument("--version", action="version", version=f"meshlet-webhook {__version__}")
    return parser


def _settings(args: argparse.Namespace) -> tuple[WebhookSettings, Path, Path]:
    env = dict(os.environ)
    for flag, (name, _) in _FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            env[ENV_PREFIX + name] = value
    if args.self_signed is not None:
        if args.tls_cert or args.tls_key:
            raise _Usage("--self-signed and --tls-cert/--tls-key exclude each other")
        directory: Path = args.self_signed
        cert, key = directory / "tls.crt", directory / "tls.key"
        if not (cert.exists() and key.exists()):
            host = env.get(ENV_PREFIX + "LISTEN_ADDR", "").rpartition(":")[0].strip("[]")
            names = ["localhost", "127.0.0.1", *([host] if host not in ("", "0.0.0.0") else [])]  # noqa: S104
            try:
                write_self_signed(directory, sorted(set(names)))
            except OSError as error:
                raise _Usage(f"cannot write a certificate to {directory}: {error}") from None
        env[ENV_PREFIX + "TLS_CERT_FILE"], env[ENV_PREFIX + "TLS_KEY_FILE"] = str(cert), str(key)
    settings = load_settings(env)
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise _Usage(
            "no serving certificate: give --tls-cert and --tls-key "
            f"({ENV_PREFIX}TLS_CERT_FILE/_KEY_FILE) or --self-signed DIR"
        )
    return settings, settings.tls_cert_file, settings.tls_key_file


def _cluster_view(settings: WebhookSettings) -> ClusterView:
    if settings.cluster == "kubernetes":
        from webhook.kube_api import KubernetesClusterView  # noqa: PLC0415 (only with a cluster)

        return KubernetesClusterView(kubeconfig=settings.kubeconfig_file)
    return StaticClusterView(Path(settings.cluster))


def _bind(settings: WebhookSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it Nagle + delayed ACKs add ~40 ms to every keep-alive response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.listen_host, settings.listen_port))
    except OSError as error:
        sock.close()
        raise _Usage(
            f"cannot listen on {settings.listen_host}:{settings.listen_port}: {error.strerror}"
        ) from None
    sock.listen(512)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings, cert, key = _settings(args)
        configure_logging(settings.log_level)
        tls = ReloadingServerTLS(cert, key, check_interval=settings.tls_check_interval)
        view = _cluster_view(settings)
        sock = _bind(settings)
    except (_Usage, SettingsError, TLSFilesError, ClusterViewError, ValueError) as error:
        print(f"meshlet-webhook: error: {error}", file=sys.stderr)
        return 2
    if settings.trust_anchors_pem is None:
        log.warning("no trust anchors configured: injected proxies get no identity settings")
    try:
        return asyncio.run(_serve(settings, view, tls, sock))
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()


async def _serve(
    settings: WebhookSettings, view: ClusterView, tls: ReloadingServerTLS, sock: socket.socket
) -> int:
    host, port = sock.getsockname()[:2]
    try:
        await view.start()  # here, not only in the app's lifespan: a bad kubeconfig is one line
    except ClusterViewError as error:
        print(f"meshlet-webhook: error: {error}", file=sys.stderr)
        return 2
    keeper = _ca_bundle_keeper(settings, view)
    keeping = asyncio.ensure_future(keeper.run()) if keeper is not None else None
    try:
        log.info("serving https://%s:%d (cluster: %s)", host, port, settings.cluster)
        await serve_app(create_app(settings, view), host=host, port=port, tls=tls, sockets=[sock])
    finally:
        if keeping is not None:
            keeping.cancel()
        await view.close()
    return 0


def _ca_bundle_keeper(settings: WebhookSettings, view: ClusterView) -> CaBundleKeeper | None:
    if not settings.ca_bundle_config or settings.tls_cert_file is None:
        return None
    api = getattr(view, "api", None)
    if api is None:
        log.warning("--ca-bundle-config needs --cluster kubernetes; the caBundle is not kept")
        return None
    # Imported only here: webhook.cabundle loads kubernetes-asyncio (~1.8 s of CPU), which
    # --help, a local --cluster file and every start-up error should not pay for.
    from webhook.cabundle import CaBundleKeeper  # noqa: PLC0415

    return CaBundleKeeper(
        api,
        name=settings.ca_bundle_config,
        certificate_file=settings.tls_cert_file,
        interval=settings.ca_bundle_interval,
    )


if __name__ == "__main__":
    sys.exit(main())
