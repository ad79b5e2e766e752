"""Who presented this ServiceAccount token? One small interface, two sources.

``TokenReviewer.review(token)`` answers with the Kubernetes username
(``system:serviceaccount:<ns>:<sa>``) or a refusal slug (identity/reasons.py):

- ``KubernetesTokenReviewer`` asks the API server with a TokenReview for the audience
  ``identity.meshlet.io`` (kubernetes-asyncio), as Linkerd's identity controller does;
- ``StaticTokenFile`` reads ``<token> <namespace>/<serviceaccount>`` lines from a file, reloaded
  when it changes. It is for running the mesh on one machine only: anyone who can read the file can
  be any workload in it.

Tokens never reach a log line or an exception message here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meshlet.names import IDENTITY_TOKEN_AUDIENCE, workload_identity

__all__ = [
    "KubernetesTokenReviewer",
    "StaticTokenFile",
    "TokenFileError",
    "TokenReviewer",
    "TokenVerdict",
    "identity_for_username",
    "parse_token_file",
]

log = logging.getLogger("meshlet.identity.tokens")

_SA_PREFIX = "system:serviceaccount:"
_MAX_TOKEN = 16 * 1024


@dataclass(frozen=True, slots=True)
class TokenVerdict:
    """Exactly one of ``username`` (authenticated) and ``reason`` (a refusal slug) is set."""

    username: str | None = None
    reason: str | None = None


class TokenReviewer(Protocol):
    async def review(self, token: str) -> TokenVerdict: ...

    async def aclose(self) -> None: ...


def identity_for_username(username: str, *, control_plane_ns: str, trust_domain: str) -> str | None:
    """The workload identity of ``system:serviceaccount:<ns>:<sa>``; ``None`` for other users."""
    if not username.startswith(_SA_PREFIX):
        return None
    parts = username.removeprefix(_SA_PREFIX).split(":")
    if len(parts) != 2 or not all(parts):
        return None
    namespace, serviceaccount = parts
    return workload_identity(
        serviceaccount, namespace, control_plane_ns=control_plane_ns, trust_domain=trust_domain
    )


# ---------------------------------------------------------------------------------------------
# Kubernetes TokenReview


class KubernetesTokenReviewer:
    """Reviews tokens with the API server; 503-style ``token_review_unavailable`` when it fails."""

    def __init__(self, configuration: Any, *, timeout: float = 5.0) -> None:
        from kubernetes_asyncio import client  # noqa: PLC0415 (only when Kubernetes is used)

        self._client = client
        self._api_client = client.ApiClient(configuration)
        self._api = client.AuthenticationV1Api(self._api_client)
        self._timeout = timeout

    @classmethod
    async def from_environment(cls, *, timeout: float = 5.0) -> KubernetesTokenReviewer:
        """In-cluster configuration, or ``$KUBECONFIG`` when set (for running outside a pod)."""
        from kubernetes_asyncio import client, config  # noqa: PLC0415

        configuration = client.Configuration()
        if os.environ.get("KUBECONFIG"):
            await config.load_kube_config(client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(configuration, timeout=timeout)

    async def review(self, token: str) -> TokenVerdict:
        if not token or len(token) > _MAX_TOKEN:
            return TokenVerdict(reason="token_invalid")
        import aiohttp  # noqa: PLC0415 (kubernetes-asyncio's transport)

        client = self._client
        body = client.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=client.V1TokenReviewSpec(token=token, audiences=[IDENTITY_TOKEN_AUDIENCE]),
        )
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._api.create_token_review(body=body)
        except client.ApiException as error:
            log.error(
                "TokenReview refused by the API server: HTTP %s %s", error.status, error.reason
            )
            return TokenVerdict(reason="token_review_unavailable")
        except (TimeoutError, OSError, aiohttp.ClientError) as error:
            log.error("TokenReview failed: %s", type(error).__name__)
            return TokenVerdict(reason="token_review_unavailable")
        except (ValueError, TypeError, KeyError) as error:
            # The answer did not deserialize; its text may echo the token, so name the type only.
            log.error("TokenReview answer unreadable: %s", type(error).__name__)
            return TokenVerdict(reason="token_review_unavailable")
        return _verdict_from_status(answer.status)

    async def aclose(self) -> None:
        await self._api_client.close()


def _verdict_from_status(status: Any) -> TokenVerdict:
    if status is None or not status.authenticated:
        error = (getattr(status, "error", None) or "").lower()
        return TokenVerdict(
            reason="token_wrong_audience" if "audience" in error else "token_invalid"
        )
    audiences = status.audiences or []
    if IDENTITY_TOKEN_AUDIENCE not in audiences:
        return TokenVerdict(reason="token_wrong_audience")
    username = getattr(status.user, "username", None) or ""
    if not username.startswith(_SA_PREFIX):
        return TokenVerdict(reason="token_not_serviceaccount")
    return TokenVerdict(username=username)


# ---------------------------------------------------------------------------------------------
# Local mode: a static token file


class TokenFileError(ValueError):
    """The token file is unreadable or has a bad line; the message names the line, never a token."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", errors="replace")).digest()


def parse_token_file(text: str, *, source: str = "token file") -> dict[bytes, str]:
    """``sha256(token) -> system:serviceaccount:<ns>:<sa>`` from ``<token> <ns>/<sa>`` lines.

    Blank lines and ``#`` comments are ignored. Tokens are kept only as digests, so a lookup does
    not compare secrets byte by byte.
    """
    table: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if len(fields) != 2 or fields[1].count("/") != 1:
            raise TokenFileError(f"{where}: expected '<token> <namespace>/<serviceaccount>'")
        namespace, serviceaccount = fields[1].split("/")
        if not namespace or not serviceaccount:
            raise TokenFileError(f"{where}: empty namespace or serviceaccount")
        digest = _digest(fields[0])
        if digest in table:
            raise TokenFileError(f"{where}: the same token appears twice")
        table[digest] = f"{_SA_PREFIX}{namespace}:{serviceaccount}"
    return table


class StaticTokenFile:
    """Development-only reviewer over a token file, reloaded when its mtime/size/inode change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._read_stamp()
        self._table = self._load()

    def _read_stamp(self) -> tuple[float, int, int]:
        try:
            info = self.path.stat()
        except OSError as error:
            raise TokenFileError(f"cannot read token file {self.path}: {error.strerror}") from None
        return (info.st_mtime, info.st_size, info.st_ino)

    def _load(self) -> dict[bytes, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TokenFileError(f"cannot read token file {self.path}: {error}") from None
        return parse_token_file(text, source=str(self.path))

    def _reload_if_changed(self) -> None:
        try:
            stamp = self._read_stamp()
            if stamp == self._stamp:
                return
            table = self._load()
        except TokenFileError as error:
            log.error("%s; keeping the previous tokens", error)
            return
        self._stamp, self._table = stamp, table
        log.info("reloaded token file %s (%d tokens)", self.path, len(table))

    async def review(self, token: str) -> TokenVerdict:
        self._reload_if_changed()
        if not token or len(token) > _MAX_TOKEN:
            return TokenVerdict(reason="token_invalid")
        username = self._table.get(_digest(token))
        if username is None:
            return TokenVerdict(reason="token_invalid")
        return TokenVerdict(username=username)

    async def aclose(self) -> None:
        return None
