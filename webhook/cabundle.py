"""Keep the MutatingWebhookConfiguration's ``caBundle`` in step with the certificate we serve.

Theory of operation: the API server trusts the webhook only through the ``caBundle`` of its
MutatingWebhookConfiguration. The rendered manifests set it once; when the serving certificate
is rotated (a new Secret, cert-manager, ``meshlet install-files --force``), this keeper patches
the configuration so the two never disagree for longer than one ``interval``. It reads the
configuration, computes the JSON patch as a pure function (only webhooks whose bundle differs,
guarded by a ``test`` of the resourceVersion so a concurrent writer makes the patch fail rather
than be overwritten), and applies it. Errors are logged and retried with backoff; the webhook keeps
serving meanwhile, since a stale bundle only matters after a rotation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["CaBundleError", "CaBundleKeeper", "bundle_from_certificate_file", "ca_bundle_patch"]

log = logging.getLogger("meshlet.webhook.cabundle")


class CaBundleError(RuntimeError):
    """The bundle cannot be read or the configuration cannot be patched; one line for logs."""


def bundle_from_certificate_file(path: Path) -> bytes:
    """The CA the API server must trust: the last certificate of the served chain (for a
    self-signed certificate, the certificate itself), as PEM."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as error:
        raise CaBundleError(f"cannot read a PEM certificate from {path}: {error}") from None
    return certificates[-1].public_bytes(Encoding.PEM)


def ca_bundle_patch(configuration: Mapping[str, Any], bundle: bytes) -> list[dict[str, Any]]:
    """RFC 6902 operations making every webhook's caBundle ``bundle``; empty when in step."""
    wanted = base64.b64encode(bundle).decode()
    operations: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        current = (webhook.get("clientConfig") or {}).get("caBundle")
        if current is not None and _same_bundle(current, bundle):
            continue
        operations.append(
            {
                "op": "add",  # "add" replaces an existing member and creates a missing one
                "path": f"/webhooks/{index}/clientConfig/caBundle",
                "value": wanted,
            }
        )
    if operations:
        version = (configuration.get("metadata") or {}).get("resourceVersion")
        if version:
            operations.insert(
                0, {"op": "test", "path": "/metadata/resourceVersion", "value": version}
            )
    return operations


def _same_bundle(current: str, bundle: bytes) -> bool:
    try:
        return base64.b64decode(current) == bundle
    except ValueError:
        return False


class CaBundleKeeper:
    """Patch ``name``'s caBundle from ``certificate_file`` now and every ``interval`` seconds."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        name: str,
        certificate_file: Path,
        interval: float = 30.0,  # seconds; a rotated Secret reaches the pod's volume in ~60 s
        max_backoff: float = 300.0,
    ) -> None:
        # Raw (_preload_content=False) calls return aiohttp responses, not the typed models.
        self._api: Any = client.AdmissionregistrationV1Api(api)
        self.name = name
        self.certificate_file = certificate_file
        self.interval = interval
        self.max_backoff = max_backoff
        self.patches = 0  # how many times the configuration was changed

    async def _get(self) -> Mapping[str, Any]:
        response = await self._api.read_mutating_webhook_configuration(
            self.name, _preload_content=False
        )
        try:
            body = await response.read()
            if response.status >= 400:
                raise CaBundleError(
                    f"reading MutatingWebhookConfiguration {self.name}: HTTP {response.status}"
                )
        finally:
            response.release()
        answer = json.loads(body)
        if not isinstance(answer, dict):
            raise CaBundleError(f"MutatingWebhookConfiguration {self.name}: unexpected answer")
        return answer

    async def sync_once(self) -> bool:
        """Bring the bundle in step; return whether the configuration was patched."""
        bundle = bundle_from_certificate_file(self.certificate_file)
        try:
            operations = ca_bundle_patch(await self._get(), bundle)
            if not operations:
                return False
            response = await self._api.patch_mutating_webhook_configuration(
                self.name,
                operations,
                _content_type="application/json-patch+json",
                _preload_content=False,
            )
            try:
                if response.status >= 400:
                    raise CaBundleError(
                        f"patching MutatingWebhookConfiguration {self.name}: HTTP {response.status}"
                    )
            finally:
                response.release()
        except ApiException as error:
            raise CaBundleError(
                f"MutatingWebhookConfiguration {self.name}: {error.status} {error.reason}"
            ) from None
        except (OSError, TimeoutError, ValueError, aiohttp.ClientError) as error:
            raise CaBundleError(f"cannot reach the Kubernetes API: {error}") from None
        self.patches += 1
        log.info("updated the caBundle of MutatingWebhookConfiguration %s", self.name)
        return True

    async def run(self) -> None:
        delay = self.interval
        while True:
            try:
                await self.sync_once()
                delay = self.interval
            except CaBundleError as error:
                log.error("%s; retrying in %.0fs", error, delay)
                delay = min(delay * 2, self.max_backoff)
            await asyncio.sleep(delay)
