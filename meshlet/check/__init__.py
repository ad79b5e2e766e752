"""``meshlet check [--pre] [-o table|json]``: is the cluster ready for meshlet, is meshlet healthy?

Like ``linkerd check``: each check prints a mark for ok, warning or error, with a hint. The
exit status is 0 unless a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from typing import TYPE_CHECKING

from meshlet.check.checks import (
    INSTALL_PERMISSIONS,
    check_control_plane_pods,
    check_issuer,
    check_permissions,
    check_proxies,
    check_version,
    check_webhook,
)
from meshlet.check.model import CheckResult, ClusterError, Status
from meshlet.names import DEFAULT_CONTROL_PLANE_NS

if TYPE_CHECKING:
    from meshlet.check.cluster import Cluster

__all__ = ["main", "run_checks"]


async def run_checks(
    cluster: Cluster, *, pre: bool, namespace: str = DEFAULT_CONTROL_PLANE_NS
) -> list[CheckResult]:
    """Run the checks in order; a failure to reach the API stops the rest."""
    try:
        version = await cluster.version()
    except ClusterError as error:
        return [
            CheckResult(
                "kubernetes-api",
                "can query the Kubernetes API",
                Status.FAIL,
                str(error),
                "check your kubeconfig and that the API server is reachable",
            )
        ]
    results = [CheckResult("kubernetes-api", "can query the Kubernetes API", Status.OK)]
    results.append(check_version(version))
    if pre:
        try:
            allowed = {
                permission: await cluster.can_i(*permission) for permission in INSTALL_PERMISSIONS
            }
        except ClusterError as error:
            results.append(
                CheckResult("pre-kubernetes-setup", "can review access", Status.FAIL, str(error))
            )
            return results
        results += check_permissions(allowed)
        return results
    try:
        control_plane = await cluster.pods(namespace, "meshlet.io/control-plane-component")
        results += check_control_plane_pods(control_plane)
        results += check_webhook(
            await cluster.mutating_webhook("meshlet-webhook"),
            await cluster.secret(namespace, "meshlet-webhook-tls"),
        )
        results += check_issuer(
            await cluster.secret(namespace, "meshlet-identity-issuer"),
            await cluster.config_map(namespace, "meshlet-identity-trust-anchors"),
            datetime.datetime.now(datetime.UTC),
        )
        results += check_proxies(await cluster.pods(None, "meshlet.io/control-plane-ns"))
    except ClusterError as error:
        results.append(
            CheckResult(
                "kubernetes-api",
                "can read meshlet's objects",
                Status.FAIL,
                str(error),
                "check that your credentials may read pods, secrets and webhook configurations",
            )
        )
    return results


def render_table(results: list[CheckResult]) -> str:
    lines: list[str] = []
    category = None
    for result in results:
        if result.category != category:
            if category is not None:
                lines.append("")
            category = result.category
            lines += [category, "-" * len(category)]
        detail = f" ({result.detail})" if result.detail else ""
        lines.append(f"{result.status.symbol} {result.name}{detail}")
        if result.hint and result.status is not Status.OK:
            lines.append(f"    see: {result.hint}")
    failed = any(r.status is Status.FAIL for r in results)
    verdict = Status.FAIL.symbol if failed else Status.OK.symbol
    lines += ["", f"Status check results are {verdict}"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="meshlet check", description=__doc__)
    parser.add_argument("--pre", action="store_true", help="check the cluster before installing")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context to use")
    parser.add_argument("--namespace", default=DEFAULT_CONTROL_PLANE_NS, help="control plane ns")
    args = parser.parse_args(argv)

    async def run() -> list[CheckResult]:
        # kubernetes-asyncio takes most of a second to import: only once the options are good.
        from meshlet.check.cluster import KubeCluster  # noqa: PLC0415

        try:
            async with KubeCluster(kubeconfig=args.kubeconfig, context=args.context) as cluster:
                return await run_checks(cluster, pre=args.pre, namespace=args.namespace)
        except ClusterError as error:
            return [
                CheckResult(
                    "kubernetes-api",
                    "can initialize the client",
                    Status.FAIL,
                    str(error),
                    "set KUBECONFIG or pass --kubeconfig",
                )
            ]

    results = asyncio.run(run())
    if args.output == "json":
        print(json.dumps({"results": [r.as_dict() for r in results]}, indent=2))
    else:
        print(render_table(results))
    return 1 if any(r.status is Status.FAIL for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
