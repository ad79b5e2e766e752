"""The injector as a local process: ``meshlet-webhook`` on 127.0.0.1, asked like the API server.

``LocalWebhook.start()`` runs the webhook with a self-signed serving certificate in ``workdir``,
a local cluster file (``cluster_yaml``: the namespaces it sees and their labels) and the mesh's
trust anchors, and waits for ``/readyz``. ``inject(pod)`` sends the AdmissionReview the API
server would send for that Pod (TLS verified against the webhook's certificate), checks the
answer and applies its JSONPatch: the Pod the cluster would run. It is an ``Injector`` for
``MeshNode``.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Final

import jsonpatch

from meshlet.localmesh.netns import LocalMeshError, clean_env
from meshlet.localmesh.programs import WEBHOOK_BIN

__all__ = ["LocalWebhook", "admission_review"]

READY_TIMEOUT: Final = 30.0
_MAX_ANSWER: Final = 4 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admission_review(pod: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview (v1) of a Pod CREATE, as the API server sends it."""
    resource = {"group": "", "version": "v1", "resource": "pods"}
    kind = {"group": "", "version": "v1", "kind": "Pod"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
        },
    }


class LocalWebhook:
    """A ``meshlet-webhook`` process and a client for it; ``stop()`` ends it by PID."""

    def __init__(self, workdir: Path, cluster_yaml: Path, trust_anchors: Path) -> None:
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cacert = workdir / "tls" / "tls.crt"
        self.log_path = workdir / "webhook.log"
        self.command = [
            WEBHOOK_BIN,
            *("--listen", f"127.0.0.1:{self.port}"),
            *("--self-signed", str(workdir / "tls")),
            *("--cluster", str(cluster_yaml)),
            *("--trust-anchors", str(trust_anchors)),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.admitted = 0

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=clean_env()
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise LocalMeshError(f"meshlet-webhook exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.cacert.exists() and self._request("GET", "/readyz")[0] == 200:
                    return
            except (OSError, ssl.SSLError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise LocalMeshError(f"meshlet-webhook not ready after {READY_TIMEOUT:.0f}s")
            time.sleep(0.1)

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(self.cacert))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=10, context=context
        )
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(_MAX_ANSWER)
        finally:
            connection.close()

    def inject(self, pod: dict[str, Any]) -> dict[str, Any]:
        """The Pod after the webhook's patch; ``LocalMeshError`` when it is not injected."""
        review = admission_review(pod)
        status, body = self._request("POST", "/inject", json.dumps(review).encode())
        if status != 200:
            raise LocalMeshError(f"meshlet-webhook answered {status}: {body[:300]!r}")
        response = json.loads(body)["response"]
        if response.get("uid") != review["request"]["uid"] or not response.get("allowed"):
            raise LocalMeshError(f"meshlet-webhook did not admit the pod: {response}")
        if response.get("patchType") != "JSONPatch" or "patch" not in response:
            name = pod["metadata"].get("name")
            raise LocalMeshError(f"meshlet-webhook left pod {name} unchanged: {response}")
        operations = json.loads(base64.b64decode(response["patch"]))
        injected: dict[str, Any] = jsonpatch.apply_patch(pod, operations)
        self.admitted += 1
        return injected

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
