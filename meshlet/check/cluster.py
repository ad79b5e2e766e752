"""The one interface ``meshlet check`` reads the cluster through, and its kubernetes-asyncio
implementation. Tests drive the implementation against a fake API server."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from meshlet.check.model import ClusterError

__all__ = ["Cluster", "ClusterError", "KubeCluster"]

Object = Mapping[str, Any]


class Cluster(Protocol):
    async def version(self) -> Object: ...
    async def can_i(self, verb: str, group: str, resource: str) -> bool: ...
    async def pods(self, namespace: str | None, label_selector: str) -> list[Object]: ...
    async def mutating_webhook(self, name: str) -> Object | None: ...
    async def secret(self, namespace: str, name_prefix: str) -> Object | None: ...
    async def config_map(self, namespace: str, name: str) -> Object | None: ...


class KubeCluster:
    """``Cluster`` over kubernetes-asyncio: kubeconfig (or in-cluster) credentials."""

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None) -> None:
        self._kubeconfig = kubeconfig
        self._context = context
        self._api: ApiClient | None = None

    async def __aenter__(self) -> KubeCluster:
        configuration = client.Configuration()
        try:
            await config.load_kube_config(
                config_file=self._kubeconfig,
                context=self._context,
                client_configuration=configuration,
            )
        except (config.ConfigException, OSError) as kube_error:
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except config.ConfigException:
                raise ClusterError(f"cannot load a kubeconfig: {kube_error}") from kube_error
        except Exception as error:  # malformed YAML, wrong types: the loader raises many kinds
            where = self._kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ClusterError(
                f"cannot read the kubeconfig {where}: {reason or type(error).__name__}"
            ) from None
        self._api = ApiClient(configuration)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._api is not None:
            await self._api.close()

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            raise ClusterError("KubeCluster used outside 'async with'")
        return self._api

    async def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        # Raw JSON rather than the client's typed models: a checker must read objects that the
        # models' strict validation would refuse, and report them instead of crashing.
        try:
            response = await method(*args, _preload_content=False, **kwargs)
            try:
                status, body = response.status, await response.read()
            finally:
                response.release()
            if status == 404:
                return None
            if status >= 400:
                raise ClusterError(f"{what}: HTTP {status} {body[:200].decode(errors='replace')}")
            answer = json.loads(body)
        except ApiException as error:
            if error.status == 404:
                return None
            raise ClusterError(f"{what}: {error.status} {error.reason}") from error
        except ValueError as error:
            raise ClusterError(f"{what}: unexpected answer from the API server: {error}") from error
        except (OSError, aiohttp.ClientError) as error:
            raise ClusterError(f"cannot reach the Kubernetes API: {error}") from error
        if not isinstance(answer, dict):
            raise ClusterError(f"{what}: unexpected answer from the API server")
        if answer.get("kind") == "Status" and answer.get("status") == "Failure":
            if answer.get("code") == 404:
                return None
            raise ClusterError(f"{what}: {answer.get('code')} {answer.get('message', '')}")
        return answer

    async def version(self) -> Object:
        answer = await self._call("GET /version", client.VersionApi(self.api).get_code)
        if not isinstance(answer, Mapping):
            raise ClusterError("the API server did not answer /version")
        return answer

    async def can_i(self, verb: str, group: str, resource: str) -> bool:
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    verb=verb, group=group, resource=resource
                )
            )
        )
        api = client.AuthorizationV1Api(self.api)
        answer = await self._call("access review", api.create_self_subject_access_review, review)
        return bool(((answer or {}).get("status") or {}).get("allowed"))

    async def pods(self, namespace: str | None, label_selector: str) -> list[Object]:
        core = client.CoreV1Api(self.api)
        if namespace:
            answer = await self._call(
                "list pods", core.list_namespaced_pod, namespace, label_selector=label_selector
            )
        else:
            answer = await self._call(
                "list pods", core.list_pod_for_all_namespaces, label_selector=label_selector
            )
        return list((answer or {}).get("items") or [])

    async def mutating_webhook(self, name: str) -> Object | None:
        api = client.AdmissionregistrationV1Api(self.api)
        answer = await self._call(
            "read webhook configuration", api.read_mutating_webhook_configuration, name
        )
        return answer if isinstance(answer, Mapping) else None

    async def secret(self, namespace: str, name_prefix: str) -> Object | None:
        # kustomize appends a content hash to generated Secrets' names.
        core = client.CoreV1Api(self.api)
        answer = await self._call("list secrets", core.list_namespaced_secret, namespace)
        matches = [
            item
            for item in (answer or {}).get("items") or []
            if str(item.get("metadata", {}).get("name", "")).startswith(name_prefix)
        ]
        matches.sort(key=lambda item: str(item["metadata"].get("creationTimestamp", "")))
        return matches[-1] if matches else None

    async def config_map(self, namespace: str, name: str) -> Object | None:
        core = client.CoreV1Api(self.api)
        answer = await self._call(
            "read config map", core.read_namespaced_config_map, name, namespace
        )
        return answer if isinstance(answer, Mapping) else None
