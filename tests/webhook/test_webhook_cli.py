"""``meshlet inject`` on sample manifests: annotate by default, inline with --manual."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.webhook.podcheck import check_pod
from webhook import cli
from webhook.inject import Injector
from webhook.patch import Owner
from webhook.settings import WebhookSettings

MANIFESTS = Path(__file__).parent / "manifests"
WORKLOADS = MANIFESTS / "workloads.yaml"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[Any], str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, list(yaml.safe_load_all(captured.out)), captured.err


def _by_name(documents: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for document in documents:
        if document.get("kind") == "List":
            found |= _by_name(document["items"])
        else:
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def _template(document: dict[str, Any]) -> dict[str, Any]:
    if document["kind"] == "Pod":
        return document
    if document["kind"] == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return document["spec"]["template"]  # type: ignore[no-any-return]


INJECTABLE = [
    "Pod/debug",
    "Deployment/web",
    "StatefulSet/db",
    "ReplicaSet/worker",
    "CronJob/report",
    "Deployment/api",
]


def test_default_annotates_pod_templates(capsys: pytest.CaptureFixture[str]) -> None:
    status, documents, report = _run(capsys, str(WORKLOADS))
    assert status == 0
    original = _by_name(list(yaml.safe_load_all(WORKLOADS.read_text())))
    result = _by_name(documents)
    assert list(result) == list(original)  # every document out, in order
    for name in INJECTABLE:
        annotations = _template(result[name])["metadata"]["annotations"]
        assert annotations["meshlet.io/inject"] == "enabled", name
        assert "initContainers" not in _template(result[name])["spec"] or name == "Deployment/web"
    assert _template(result["Deployment/web"])["metadata"]["annotations"]["example.com/a~b/c"]
    for untouched in [
        "Namespace/shop",
        "Service/web",
        "ConfigMap/api-config",
        "DaemonSet/node-agent",
        "Job/migrate-once",
    ]:
        assert result[untouched] == original[untouched], untouched
    assert 'daemonset "node-agent" skipped: host_network_enabled' in report
    assert 'job "migrate-once" skipped: injection_disabled_at_pod' in report
    assert 'cronjob "report" annotated' in report
    assert report.strip().endswith("6 annotated, 2 skipped")


def test_manual_inlines_what_the_webhook_would_patch(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["--manual", str(WORKLOADS)])
    captured = capsys.readouterr()
    documents, report = list(yaml.safe_load_all(captured.out)), captured.err
    assert status == 0
    assert "&id0" not in captured.out  # the shared proxy containers are written out in full
    assert report.strip().endswith("6 injected, 2 skipped")
    original = _by_name(list(yaml.safe_load_all(WORKLOADS.read_text())))
    result = _by_name(documents)
    injector = Injector(WebhookSettings(), created_by=f"meshlet/cli v{cli.__version__}")
    for name in INJECTABLE:
        kind, _, workload = name.partition("/")
        template = _template(result[name])
        init = [c["name"] for c in template["spec"]["initContainers"]]
        assert init[:2] == ["meshlet-init", "meshlet-proxy"], name
        expected = injector.run(
            _template(copy.deepcopy(original[name])),
            namespace="shop",
            namespace_labels={},
            namespace_annotations={},
            owner=None if kind == "Pod" else Owner(kind, workload),
            ignore_namespace=True,
        ).pod
        assert template == expected, name
        check_pod({"apiVersion": "v1", "kind": "Pod", **template} if kind != "Pod" else template)
    labels = _template(result["CronJob/report"])["metadata"]["labels"]
    assert labels["meshlet.io/proxy-cronjob"] == "report"


def test_manual_is_idempotent(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, documents, _ = _run(capsys, "--manual", str(WORKLOADS))
    (tmp_path / "once.yaml").write_text(yaml.safe_dump_all(documents))
    status, again, report = _run(capsys, "--manual", str(tmp_path / "once.yaml"))
    assert status == 1
    assert again == documents
    assert "sidecar_already_exists" in report


def test_config_flag_and_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    status, documents, _ = _run(capsys, "--config", "proxy-log-level=debug", str(WORKLOADS))
    assert status == 0
    web = _template(_by_name(documents)["Deployment/web"])
    assert web["metadata"]["annotations"]["config.meshlet.io/proxy-log-level"] == "debug"
    assert cli.main(["--config", "proxy-uid=root", str(WORKLOADS)]) == 2
    assert "'root' is not a user id" in capsys.readouterr().err
    assert cli.main(["--config", "colour=blue", str(WORKLOADS)]) == 2


def test_nothing_to_inject_exits_1_with_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    status, documents, report = _run(capsys, str(MANIFESTS / "nothing.yaml"))
    assert status == 1
    assert documents == list(yaml.safe_load_all((MANIFESTS / "nothing.yaml").read_text()))
    assert 'deployment "istio-app" skipped: sidecar_already_exists' in report
    assert "nothing injected: every pod template was skipped" in report


def test_directory_and_bad_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, documents, _ = _run(capsys, str(MANIFESTS))
    assert status == 0
    assert len(documents) == 12  # both files, every document
    assert cli.main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: No such file or directory" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    assert cli.main([str(tmp_path / "bad.yaml")]) == 2
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err


def test_stdin_through_the_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshlet.cli", "inject", "-"],
        input=WORKLOADS.read_text(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "meshlet.io/inject: enabled" in result.stdout
    assert "6 annotated, 2 skipped" in result.stderr


def test_deep_or_large_input_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deep enough to load without a RecursionError, still past the depth bound.
    levels = cli.MAX_DEPTH + 1
    (tmp_path / "deep.yaml").write_text("kind: Pod\nspec: " + "[" * levels + "]" * levels + "\n")
    assert cli.main([str(tmp_path / "deep.yaml")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"deep.yaml: nested too deeply (over {cli.MAX_DEPTH} levels)" in captured.err
    # At the bound it is accepted (a Pod without containers: skipped, not refused).
    (tmp_path / "ok.yaml").write_text("kind: Pod\nspec: " + "[" * 99 + "]" * 99 + "\n")
    assert cli.main([str(tmp_path / "ok.yaml")]) == 1
    capsys.readouterr()
    monkeypatch.setattr(cli, "MAX_INPUT_BYTES", 1024 * 1024)
    (tmp_path / "big.yaml").write_text("# " + "x" * (1024 * 1024) + "\n")
    assert cli.main([str(tmp_path / "big.yaml")]) == 2
    assert "big.yaml: larger than 1 MiB" in capsys.readouterr().err
