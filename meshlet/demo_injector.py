"""``meshlet demo --injector-only``: the sidecar injector's dry run, without root.

The demo starts ``meshlet-webhook`` as a real process
on 127.0.0.1 with a certificate it generates in a temporary directory, sends it the
AdmissionReview the API server would send for a Deployment's pod (``curl --cacert``), prints
the decision, the reasons and what the patch adds, then a pod the webhook leaves alone, and
stops the webhook and removes the directory (on Ctrl-C too).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from meshlet.devcert import write_self_signed
from webhook.samples import cluster_file, sample_review

__all__ = ["main"]

READY_TIMEOUT = 30.0  # seconds for the webhook to answer /readyz (it starts in ~1 s)


class DemoError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Webhook:
    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.url = f"https://127.0.0.1:{port}"
        self.cacert = workdir / "tls" / "tls.crt"
        self.log_path = workdir / "webhook.log"
        anchors = write_self_signed(workdir / "anchors", ["root.meshlet.demo"], stem="ca").cert
        self.command = [
            sys.executable, "-m", "webhook",
            "--listen", f"127.0.0.1:{port}",
            "--self-signed", str(workdir / "tls"),
            "--cluster", str(cluster_file()),
            "--trust-anchors", str(anchors),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise DemoError(f"meshlet-webhook exited:\n{self.log_path.read_text()}")
            if self.cacert.exists():
                probe = self.curl("/readyz", check=False)
                if probe.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise DemoError(f"meshlet-webhook not ready after {READY_TIMEOUT:.0f}s")
            time.sleep(0.1)

    def curl(self, path: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["curl", "--silent", "--show-error", "--fail-with-body", "--max-time", "10",
                   "--cacert", str(self.cacert), *args, self.url + path]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=20)
        if check and result.returncode != 0:
            raise DemoError(f"curl {path} failed: {result.stderr.strip() or result.stdout}")
        return result

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _show_explained(explained: dict[str, Any]) -> None:
    verdict = "INJECT" if explained["inject"] else "SKIP"
    print(f"  pod {explained['pod']} (owner {explained['owner'] or 'none'}): {verdict}")
    for reason in explained["reasons"]:
        for slug, sentence in reason.items():
            print(f"    because {slug}: {sentence}")
    for warning in explained["warnings"]:
        print(f"    warning: {warning}")
    pod = explained.get("injectedPod")
    if not pod:
        return
    print("  init containers, in start order:")
    for container in pod["spec"]["initContainers"]:
        native = (
            " (native sidecar: runs for the pod's life)" if container.get("restartPolicy") else ""
        )
        print(f"    - {container['name']}  {container['image']}{native}")
    print(f"  application containers: {', '.join(c['name'] for c in pod['spec']['containers'])}")
    added = [op for op in explained["patch"] if op["op"] == "add"]
    for prefix, what in (
        ("/metadata/labels/", "labels"),
        ("/metadata/annotations/", "annotations"),
    ):
        keys = [op["path"][len(prefix) :].replace("~1", "/").replace("~0", "~") for op in added
                if op["path"].startswith(prefix)]  # fmt: skip
        print(f"  {what} added: {', '.join(keys)}")
    volumes = [op["value"]["name"] for op in added if op["path"].startswith("/spec/volumes/")]
    print(f"  volumes added: {', '.join(volumes)}")


def _show_raw(answer: dict[str, Any]) -> None:
    response = answer["response"]
    print(f"  uid {response['uid']}  allowed={response['allowed']}")
    if "patch" not in response:
        print("  no patch: the pod is admitted unchanged")
        return
    operations = json.loads(base64.b64decode(response["patch"]))
    print(f"  patchType {response['patchType']}: {len(response['patch'])} bytes of base64, "
          f"{len(operations)} operations:")  # fmt: skip
    for operation in operations:
        print(f"    {operation['op']:7} {operation['path']}")


def _run(workdir: Path) -> None:
    webhook = _Webhook(workdir, _free_port())
    try:
        print(f"$ meshlet-webhook {' '.join(webhook.command[3:])}")
        webhook.start()
        print(f"  listening on {webhook.url} (certificate {webhook.cacert})\n")
        review_file = workdir / "review.json"
        review_file.write_text(json.dumps(sample_review(), indent=2))
        data = ["-H", "Content-Type: application/json", "--data-binary", f"@{review_file}"]

        print("1. The API server asks about a new pod of Deployment 'web' in namespace 'shop'")
        print(f"$ curl --cacert {webhook.cacert} --data-binary @{review_file} "
              f"'{webhook.url}/inject?explain=true'")  # fmt: skip
        _show_explained(yaml.safe_load(webhook.curl("/inject?explain=true", *data).stdout))

        print("\n2. The raw AdmissionReview answer, as the API server reads it")
        print(f"$ curl --cacert {webhook.cacert} --data-binary @{review_file} {webhook.url}/inject")
        _show_raw(json.loads(webhook.curl("/inject", *data).stdout))

        print("\n3. The same pod in namespace 'legacy', which is not labelled for injection")
        legacy = sample_review()
        legacy["request"]["namespace"] = legacy["request"]["object"]["metadata"]["namespace"] = (
            "legacy"
        )
        review_file.write_text(json.dumps(legacy))
        _show_explained(yaml.safe_load(webhook.curl("/inject?explain=true", *data).stdout))
        _show_raw(json.loads(webhook.curl("/inject", *data).stdout))
    finally:
        webhook.stop()
    print("\nwebhook stopped; see docs/webhook.md to run it yourself")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="meshlet demo --injector-only",
        description="Start the injector locally and show its decision and patch for two pods.",
    )
    parser.parse_args(argv)
    if shutil.which("curl") is None:
        print("meshlet demo: error: curl is not installed (apt-get install curl)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="meshlet-demo-"))
    try:
        _run(workdir)
    except DemoError as error:
        print(f"meshlet demo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmeshlet demo: interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
