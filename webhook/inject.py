"""One injection, start to end, with no I/O: decide, resolve overrides, build the pod, diff it.

The webhook and ``meshlet inject --manual`` both call :meth:`Injector.run`, so what the CLI
writes is exactly what the webhook would have patched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.config import resolve_config
from webhook.decision import Decision, decide
from webhook.patch import Owner, inject_pod, make_patch
from webhook.settings import WebhookSettings

__all__ = ["Injector", "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: Decision
    warnings: tuple[str, ...]
    pod: dict[str, Any] | None  # the injected pod; None when skipped
    patch: list[dict[str, Any]]  # RFC 6902 operations; empty when skipped


class Injector:
    """Holds what is fixed per process (settings) and injects pods one at a time."""

    def __init__(self, settings: WebhookSettings, *, created_by: str) -> None:
        self.settings = settings
        self.mesh = settings.mesh_params(created_by)
        self._own_images = (f"{settings.proxy.image}:",)

    def run(
        self,
        pod: Mapping[str, Any],
        *,
        namespace: str,
        namespace_labels: Mapping[str, str],
        namespace_annotations: Mapping[str, str],
        owner: Owner | None,
        ignore_namespace: bool = False,
    ) -> Outcome:
        """Inject ``pod`` if the decision says so; ``pod`` must pass ``pod_shape_error``."""
        decision = decide(
            namespace=namespace,
            namespace_labels=namespace_labels,
            pod=pod,
            control_plane_ns=self.settings.control_plane_ns,
            ignore_namespace=ignore_namespace,
            own_image_prefixes=self._own_images,
        )
        if not decision.inject:
            return Outcome(decision, (), None, [])
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        config, warnings, inherited = resolve_config(
            self.settings.proxy, namespace_annotations, annotations
        )
        injected = inject_pod(
            pod,
            namespace=namespace,
            config=config,
            mesh=self.mesh,
            owner=owner,
            inherited_annotations=inherited,
            warnings=warnings,
        )
        return Outcome(decision, tuple(warnings), injected, make_patch(pod, injected))
