"""``meshlet-identity``: serve the identity API over TLS with a certificate it issues itself."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from identity.app import create_app
from identity.issuer import IssuerFiles, IssuerStore
from identity.service import Authority
from identity.serving import SelfServing
from identity.settings import IdentitySettings, SettingsError, load_settings
from identity.tokens import KubernetesTokenReviewer, StaticTokenFile, TokenFileError, TokenReviewer
from meshlet.logs import configure_logging
from meshlet.names import control_plane_identity
from meshlet.tlsserve import (
    ListenError,
    ReloadingServerTLS,
    TLSFilesError,
    listen_socket,
    serve_app,
)

__all__ = ["main"]

log = logging.getLogger("meshlet.identity")

# How often the serving TLS context looks for the certificate this process re-issued.
_SERVING_CHECK_INTERVAL = 1.0
_SERVING_MIN_LIFETIME = datetime.timedelta(hours=24)


class StartupError(RuntimeError):
    """Why the service cannot start, as one line for the operator."""


async def _reviewer(settings: IdentitySettings) -> TokenReviewer:
    token_file = settings.token_file
    if token_file is not None:
        log.warning("local mode: tokens are checked against %s (development only)", token_file)
        try:
            return StaticTokenFile(token_file)
        except TokenFileError as error:
            raise StartupError(str(error)) from None
    try:
        return await KubernetesTokenReviewer.from_environment(timeout=settings.token_review_timeout)
    except Exception as error:  # the kubernetes config loaders raise many types
        raise StartupError(
            f"cannot configure the Kubernetes client for TokenReview ({error}); "
            "run in a pod, set KUBECONFIG, or use MESHLET_IDENTITY_TOKEN_SOURCE=<token file>"
        ) from None


async def _serve(settings: IdentitySettings, serving_dir: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    files = IssuerFiles(
        cert=settings.issuer_cert_file,
        key=settings.issuer_key_file,
        anchors=settings.trust_anchors_file,
    )
    store = IssuerStore(files)
    store.refresh(now)
    issuer = store.state.issuer
    if issuer is None:
        raise StartupError(f"the issuer cannot sign: {store.state.detail}")
    name = control_plane_identity(
        "identity", control_plane_ns=settings.control_plane_ns, trust_domain=settings.trust_domain
    )
    serving = SelfServing(
        serving_dir,
        name,
        # The service's own certificate is not a workload's: it lives at least a day (still
        # clamped to the issuer's expiry and re-issued when the issuer changes), so a short
        # workload lifetime never lets it expire between two refresh ticks.
        lifetime=max(datetime.timedelta(seconds=settings.leaf_lifetime), _SERVING_MIN_LIFETIME),
        clock_skew=datetime.timedelta(seconds=settings.clock_skew),
    )
    serving.issue(issuer, now)
    try:
        tls = ReloadingServerTLS(
            serving.cert_file, serving.key_file, check_interval=_SERVING_CHECK_INTERVAL
        )
    except TLSFilesError as error:
        raise StartupError(str(error)) from None
    reviewer = await _reviewer(settings)
    try:
        sock = listen_socket(settings.listen_host, settings.listen_port, backlog=512)
    except ListenError as error:
        raise StartupError(str(error)) from None
    authority = Authority(settings=settings, store=store, reviewer=reviewer)
    app = create_app(authority, serving=serving)
    host, port = sock.getsockname()[:2]
    log.info("identity service listening on %s:%d as %s", host, port, name)
    level = os.environ.get("MESHLET_UVICORN_LOG_LEVEL", "warning")
    try:
        await serve_app(app, host=host, port=port, tls=tls, sockets=[sock], log_level=level)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
        configure_logging(settings.log_level, "json" if settings.log_format == "json" else "plain")
    except (SettingsError, ValueError) as error:
        print(f"meshlet-identity: {error}", file=sys.stderr)
        return 2
    serving_dir = Path(tempfile.mkdtemp(prefix="meshlet-identity-"))
    try:
        asyncio.run(_serve(settings, serving_dir))
    except StartupError as error:
        log.error("cannot start: %s", error)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        shutil.rmtree(serving_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
