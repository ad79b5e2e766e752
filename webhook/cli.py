"""``meshlet inject FILE|DIR|-``: add meshlet to Kubernetes YAML, like ``linkerd inject``.

By default each pod template gets the annotation ``meshlet.io/inject: enabled`` and the webhook
injects the pods when they are created. ``--manual`` inlines the whole injection instead, with
the very code the webhook runs (:class:`webhook.inject.Injector`), for clusters without the
webhook. Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
CronJob and List are handled, in multi-document YAML or JSON; other kinds pass through
untouched. The YAML goes to stdout, a report to stderr. Exit status: 0 when at least one
resource was annotated or injected, 1 when none could be (the report says why), 2 for bad
input or options.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from meshlet import __version__
from meshlet.names import CONFIG_ANNOTATION_PREFIX, DEFAULT_CONTROL_PLANE_NS, INJECT_ANNOTATION
from webhook import yamlout
from webhook.config import OVERRIDE_NAMES, resolve_config
from webhook.decision import decide, explain
from webhook.inject import Injector
from webhook.patch import Owner
from webhook.settings import ENV_PREFIX, SettingsError, load_settings
from webhook.shape import pod_shape_error

__all__ = ["main"]

_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}
_SUFFIXES = (".yaml", ".yml", ".json")
# Bounds on input: a Kubernetes object is at most ~1.5 MiB (etcd's limit) and a few dozen levels
# deep; a file past these is a mistake or a hostile input, refused before it costs much.
MAX_INPUT_BYTES = 32 * 1024 * 1024
MAX_DEPTH = 100


class InputError(Exception):
    """A file cannot be read or parsed; the message names it."""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    changed: int = 0
    skipped: int = 0

    def add(self, kind: str, name: str, verdict: str, *, changed: bool) -> None:
        self.lines.append(f'{kind.lower()} "{name}" {verdict}')
        if changed:
            self.changed += 1
        else:
            self.skipped += 1


@dataclass(frozen=True)
class Options:
    manual: bool
    namespace: str
    config: dict[str, str]
    injector: Injector | None  # only with --manual


def _template(document: dict[str, Any], kind: str) -> dict[str, Any] | None:
    node: Any = document
    for key in _TEMPLATE_PATHS[kind]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _process_workload(
    document: dict[str, Any], kind: str, options: Options, report: Report
) -> None:
    raw_metadata = document.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    name = str(metadata.get("name") or metadata.get("generateName") or "<unnamed>")
    namespace = str(metadata.get("namespace") or options.namespace)
    template = _template(document, kind)
    problem = pod_shape_error(template) if template is not None else "it has no pod template"
    if template is None or problem is not None:
        report.add(kind, name, f"skipped: not a valid pod template ({problem})", changed=False)
        return
    candidate = dict(template)
    candidate["metadata"] = dict(template.get("metadata") or {})
    annotations = {**(candidate["metadata"].get("annotations") or {}), **options.config}
    candidate["metadata"]["annotations"] = annotations
    if options.injector is not None:
        outcome = options.injector.run(
            candidate,
            namespace=namespace,
            namespace_labels={},
            namespace_annotations={},
            owner=Owner(kind, name) if kind != "Pod" else None,
            ignore_namespace=True,
        )
        if outcome.pod is None:
            report.add(kind, name, f"skipped: {explain(outcome.decision.reasons)}", changed=False)
            return
        template.clear()
        template.update(outcome.pod)
        for warning in outcome.warnings:
            report.lines.append(f'warning: {kind.lower()} "{name}": {warning}')
        report.add(kind, name, "injected", changed=True)
        return
    decision = decide(
        namespace=namespace,
        namespace_labels={},
        pod=candidate,
        control_plane_ns=DEFAULT_CONTROL_PLANE_NS,
        ignore_namespace=True,
    )
    if not decision.inject:
        report.add(kind, name, f"skipped: {explain(decision.reasons)}", changed=False)
        return
    annotations[INJECT_ANNOTATION] = "enabled"
    template["metadata"] = candidate["metadata"]
    report.add(kind, name, "annotated", changed=True)


def _process(document: Any, options: Options, report: Report) -> None:
    if not isinstance(document, dict):
        return
    kind = document.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(document.get("items"), list):
        for item in document["items"]:
            _process(item, options, report)
    elif kind in _TEMPLATE_PATHS:
        _process_workload(document, str(kind), options, report)


def _files(target: str) -> Iterator[tuple[str, TextIO | Path]]:
    if target == "-":
        yield "<stdin>", sys.stdin
        return
    path = Path(target)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
        if not found:
            raise InputError(f"{target}: no .yaml, .yml or .json files in this directory")
        for file in found:
            yield str(file), file
    else:
        yield target, path


def _too_deep(document: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``document`` nests lists and mappings more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return False


def _read(source: TextIO | Path) -> str:
    if isinstance(source, Path):
        with source.open(encoding="utf-8") as file:
            text = file.read(MAX_INPUT_BYTES + 1)
    else:
        text = source.read(MAX_INPUT_BYTES + 1)
    if len(text) > MAX_INPUT_BYTES:
        raise InputError(f"larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    return text


def _load(targets: list[str]) -> list[Any]:
    documents: list[Any] = []
    for target in targets:
        for label, source in _files(target):
            try:
                loaded = [d for d in yaml.safe_load_all(_read(source)) if d is not None]
            except InputError as error:
                raise InputError(f"{label}: {error}") from None
            except OSError as error:
                raise InputError(f"{label}: {error.strerror}") from None
            except (yaml.YAMLError, UnicodeDecodeError) as error:
                raise InputError(f"{label}: not valid YAML: {error}".splitlines()[0]) from None
            except RecursionError:  # the YAML composer recurses once per level
                raise InputError(f"{label}: nested too deeply (over {MAX_DEPTH} levels)") from None
            if any(_too_deep(document) for document in loaded):
                raise InputError(f"{label}: nested too deeply (over {MAX_DEPTH} levels)")
            documents += loaded
    return documents


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlet inject",
        description="Add meshlet to Kubernetes YAML: annotate pod templates for the webhook, "
        "or inline the proxy with --manual. YAML to stdout, report to stderr.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE|DIR|-")
    parser.add_argument(
        "--manual", action="store_true", help="inline meshlet-init and meshlet-proxy now"
    )
    parser.add_argument(
        "--namespace", default="default", help="namespace of resources that name none (default)"
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help=f"add {CONFIG_ANNOTATION_PREFIX}SETTING to pod templates; "
        f"SETTING is one of {', '.join(OVERRIDE_NAMES)}",
    )
    parser.add_argument("--trust-anchors", help="trust anchors PEM for --manual")
    parser.add_argument("--proxy-image", help="proxy image repository for --manual")
    parser.add_argument("--proxy-version", help="proxy image tag for --manual")
    parser.add_argument("--control-plane-namespace", help="control-plane namespace (meshlet)")
    return parser


def _config(pairs: list[str]) -> dict[str, str]:
    config: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or name not in OVERRIDE_NAMES:
            raise InputError(
                f"--config {pair!r}: expected SETTING=VALUE with a SETTING in "
                f"{', '.join(OVERRIDE_NAMES)}"
            )
        key = CONFIG_ANNOTATION_PREFIX + name
        _, warnings, _ = resolve_config(load_settings({}).proxy, {}, {key: value})
        if warnings:
            raise InputError(f"--config {pair!r}: {warnings[0]}")
        config[key] = value
    return config


def _options(args: argparse.Namespace) -> Options:
    env = dict(os.environ)
    for flag, name in (
        ("trust_anchors", "TRUST_ANCHORS_FILE"),
        ("proxy_image", "PROXY_IMAGE"),
        ("proxy_version", "PROXY_VERSION"),
        ("control_plane_namespace", "CONTROL_PLANE_NS"),
    ):
        if getattr(args, flag) is not None:
            env[ENV_PREFIX + name] = getattr(args, flag)
    settings = load_settings(env)
    injector = Injector(settings, created_by=f"meshlet/cli v{__version__}") if args.manual else None
    return Options(args.manual, args.namespace, _config(args.config), injector)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        options = _options(args)
        documents = _load(args.inputs)
    except (InputError, SettingsError) as error:
        print(f"meshlet inject: error: {error}", file=sys.stderr)
        return 2
    report = Report()
    for document in documents:
        _process(document, options, report)
    if documents:
        sys.stdout.write(yamlout.dump_all(documents))
    for line in report.lines:
        print(line, file=sys.stderr)
    if report.changed == 0:
        why = "no pod templates found" if report.skipped == 0 else "every pod template was skipped"
        print(f"meshlet inject: nothing injected: {why}", file=sys.stderr)
        return 1
    verb = "injected" if options.manual else "annotated"
    print(f"{report.changed} {verb}, {report.skipped} skipped", file=sys.stderr)
    return 0
