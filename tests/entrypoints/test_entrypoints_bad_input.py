"""``meshlet`` and its subcommands with bad input: a clear message, the right status, no traceback.

Exit statuses (docs/cli.md): 2 for a usage error (an unknown flag or command, a missing or
malformed argument, input that cannot be parsed), 1 when the command ran and failed (a refused
connection, a file it may not overwrite, nothing to inject), 0 for ``--help``.

Every row runs the installed console script in its own process; ``run_cases`` starts them all
at once. Rows marked ``xfail`` are defects in files other engineers own, named in the reason.
"""

from __future__ import annotations

import pytest

from tests.entrypoints.entrypoint_run import Case, Outcome, check, param, run_cases

T = "{tmp}"
CLOSED = "127.0.0.1:{closed}"


def _help_cases() -> list[Case]:
    commands = ["check", "demo", "edges", "identity", "install-files", "inject", "stat", "tap"]
    cases = [Case("meshlet/--help", ["meshlet", "--help"], 0)]
    cases += [Case(f"meshlet/{c}/--help", ["meshlet", c, "--help"], 0) for c in commands]
    cases.append(Case("identity/init/--help", ["meshlet", "identity", "init", "--help"], 0))
    return cases


def _cli_cases() -> list[Case]:
    return [
        Case("meshlet/no-command", ["meshlet"], 2, ["command"]),
        Case("meshlet/unknown-command", ["meshlet", "frobnicate"], 2, ["frobnicate"]),
        Case("meshlet/unknown-flag", ["meshlet", "--frobnicate"], 2, ["--frobnicate"]),
        Case("demo/unknown-flag", ["meshlet", "demo", "--frobnicate"], 2, ["--frobnicate"]),
    ]


def _inject_cases() -> list[Case]:
    inject = ["meshlet", "inject"]
    return [
        Case("inject/no-input", inject, 2, ["required"]),
        Case("inject/unknown-flag", [*inject, "--frobnicate", f"{T}/deployment.yaml"], 2,
             ["--frobnicate"]),
        Case("inject/missing-file", [*inject, f"{T}/missing.yaml"], 2,
             ["missing.yaml", "no such file"], stdout_empty=True),
        Case("inject/directory-without-yaml", [*inject, f"{T}/emptydir"], 2,
             ["emptydir", "no .yaml"], stdout_empty=True),
        Case("inject/empty-file", [*inject, f"{T}/empty.yaml"], 1, ["no pod templates"]),
        Case("inject/binary-file", [*inject, f"{T}/binary.yaml"], 2, ["binary.yaml"],
             stdout_empty=True),
        Case("inject/malformed-yaml", [*inject, f"{T}/bad.yaml"], 2,
             ["bad.yaml", "not valid yaml"], stdout_empty=True),
        Case("inject/malformed-json", [*inject, f"{T}/bad.json"], 2, ["bad.json"],
             stdout_empty=True),
        Case("inject/deeply-nested", [*inject, f"{T}/deep.yaml"], 2, ["deep.yaml",
             "nested too deeply"], stdout_empty=True),
        Case("inject/stdin-malformed", [*inject, "-"], 2, ["<stdin>", "not valid yaml"],
             stdin=b"kind: Pod\nspec: [\n", stdout_empty=True),
        Case("inject/stdin-binary", [*inject, "-"], 2, ["<stdin>"], stdin=b"\xff\xfe\x00\x80",
             stdout_empty=True),
        Case("inject/second-file-broken", [*inject, f"{T}/deployment.yaml", f"{T}/bad.yaml"], 2,
             ["bad.yaml"], stdout_empty=True),
        Case("inject/disk-full", [*inject, f"{T}/deployment.yaml"], 1, ["no space left"],
             stdout_to="/dev/full"),
        Case("inject/only-configmap", [*inject, f"{T}/configmap.yaml"], 1, ["no pod templates"]),
        Case("inject/scalar-document", [*inject, f"{T}/scalar.yaml"], 1, ["no pod templates"]),
        Case("inject/a-list-is-injected", [*inject, f"{T}/list.yaml"], 0),
        Case("inject/list-items-not-a-list", [*inject, f"{T}/list-items-not-list.yaml"], 1,
             ["no pod templates"]),
        Case("inject/annotations-a-list", [*inject, f"{T}/annotations-list.yaml"], 1,
             ["annotations"]),
        Case("inject/metadata-a-list", [*inject, f"{T}/metadata-list.yaml"], 1, ["metadata"]),
        Case("inject/containers-a-string", [*inject, f"{T}/containers-string.yaml"], 1,
             ["containers"]),
        Case("inject/bad-config", [*inject, "--config", "frobnicate=1", f"{T}/deployment.yaml"],
             2, ["frobnicate"], stdout_empty=True),
        Case("inject/manual-anchors-missing", [*inject, "--manual", "--trust-anchors",
             f"{T}/missing.crt", f"{T}/deployment.yaml"], 2, ["missing.crt"], stdout_empty=True),
        Case("inject/manual-anchors-not-pem", [*inject, "--manual", "--trust-anchors",
             f"{T}/notpem.crt", f"{T}/deployment.yaml"], 2, ["notpem.crt"], stdout_empty=True),
    ]  # fmt: skip


def _identity_cases() -> list[Case]:
    identity = ["meshlet", "identity"]
    return [
        Case("identity/no-command", identity, 2, ["command"]),
        Case("identity/unknown-command", [*identity, "frobnicate"], 2, ["frobnicate"]),
        Case("identity/bad-lifetime", [*identity, "init", "--dir", f"{T}/x",
             "--anchor-lifetime", "10x"], 2, ["--anchor-lifetime", "10x"]),
        Case("identity/zero-lifetime", [*identity, "init", "--dir", f"{T}/x",
             "--issuer-lifetime", "0s"], 2, ["--issuer-lifetime"]),
        Case("identity/negative-lifetime", [*identity, "init", "--dir", f"{T}/x",
             "--issuer-lifetime", "-1"], 2, ["--issuer-lifetime"]),
        Case("identity/lifetime-too-long", [*identity, "init", "--dir", f"{T}/x",
             "--anchor-lifetime", "100000000d"], 2, ["--anchor-lifetime", "100 years"]),
        Case("identity/bad-namespace", [*identity, "init", "--dir", f"{T}/x",
             "--control-plane-ns", "Bad NS"], 2, ["--control-plane-ns", "Bad NS"]),
        Case("identity/bad-trust-domain", [*identity, "issue", "identity", "--dir", f"{T}/pki",
             "--out", f"{T}/x", "--trust-domain", "a..b"], 2, ["--trust-domain", "a..b"]),
        Case("identity/init-under-a-file", [*identity, "init", "--dir", f"{T}/empty.yaml/x"], 1,
             ["empty.yaml"]),
        Case("identity/inspect-missing", [*identity, "inspect", f"{T}/missing.crt"], 1,
             ["missing.crt", "no such file"]),
        Case("identity/inspect-empty", [*identity, "inspect", f"{T}/empty.yaml"], 1,
             ["empty.yaml", "no pem certificate"]),
        Case("identity/inspect-binary", [*identity, "inspect", f"{T}/binary.crt"], 1,
             ["binary.crt", "no pem certificate"]),
        Case("identity/inspect-directory", [*identity, "inspect", f"{T}/adir"], 1,
             ["adir", "directory"]),
        Case("identity/inspect-disk-full", [*identity, "inspect", f"{T}/pki/ca-bundle.crt"], 1,
             ["no space left"], stdout_to="/dev/full"),
        Case("identity/issue-missing-dir", [*identity, "issue", "destination", "--dir",
             f"{T}/missing", "--out", f"{T}/out"], 1, ["missing"]),
        Case("identity/issue-key-mismatch", [*identity, "issue", "destination", "--dir",
             f"{T}/pki-mismatch", "--out", f"{T}/out-mismatch"], 1, ["key"]),
        Case("identity/issue-anchors-not-pem", [*identity, "issue", "destination", "--dir",
             f"{T}/pki-notpem-anchors", "--out", f"{T}/out-notpem"], 1, ["ca-bundle.crt"]),
        Case("identity/issue-unknown-component", [*identity, "issue", "frobnicate", "--out",
             f"{T}/out"], 2, ["frobnicate"]),
        Case("identity/rotate-key-missing", [*identity, "rotate-issuer", "--dir", f"{T}/pki",
             "--anchor-key", f"{T}/missing.key"], 1, ["missing.key"]),
        Case("identity/rotate-key-not-pem", [*identity, "rotate-issuer", "--dir", f"{T}/pki",
             "--anchor-key", f"{T}/notpem.crt"], 1, ["notpem.crt"]),
        Case("identity/rotate-key-of-another-anchor", [*identity, "rotate-issuer", "--dir",
             f"{T}/pki", "--anchor-key", f"{T}/pki-other/ca.key"], 1, ["matches"]),
        Case("identity/token-binary-file", [*identity, "token", "--file", f"{T}/binary.yaml",
             "--namespace", "ns", "--serviceaccount", "sa"], 1, ["binary.yaml"]),
        Case("identity/token-file-is-directory", [*identity, "token", "--file", f"{T}/adir",
             "--namespace", "ns", "--serviceaccount", "sa"], 1, ["adir"]),
        Case("identity/token-missing-args", [*identity, "token", "--file", f"{T}/t"], 2,
             ["--namespace"]),
    ]  # fmt: skip


def _install_check_cases() -> list[Case]:
    return [
        Case("install-files/no-dir", ["meshlet", "install-files"], 2, ["dir"]),
        Case("install-files/existing", ["meshlet", "install-files", f"{T}/pki"], 1,
             ["--force"]),
        Case("install-files/bad-namespace", ["meshlet", "install-files", f"{T}/x",
             "--control-plane-ns", ""], 2, ["--control-plane-ns"]),
        Case("install-files/under-a-file", ["meshlet", "install-files", f"{T}/empty.yaml/x"], 1,
             ["empty.yaml"]),
        Case("check/bad-output", ["meshlet", "check", "-o", "xml"], 2, ["xml"]),
        Case("check/kubeconfig-missing", ["meshlet", "check", "--kubeconfig",
             f"{T}/missing.yaml"], 1, ["missing.yaml"], where="any"),
        Case("check/kubeconfig-malformed", ["meshlet", "check", "--kubeconfig",
             f"{T}/kubeconfig-bad.yaml"], 1, ["kubeconfig-bad.yaml"], where="any"),
        Case("check/kubeconfig-binary", ["meshlet", "check", "--kubeconfig",
             f"{T}/binary.yaml"], 1, ["binary.yaml"], where="any"),
        Case("check/api-refused", ["meshlet", "check", "--kubeconfig",
             f"{T}/kubeconfig-refused.yaml"], 1, ["cannot reach", "127.0.0.1"], where="any"),
    ]  # fmt: skip


def _metrics_cases() -> list[Case]:
    cases: list[Case] = []
    for command in ("stat", "edges"):
        base = ["meshlet", command]
        cases += [
            Case(f"{command}/no-source", base, 2, ["--admin", "--prometheus"]),
            Case(f"{command}/unknown-flag", [*base, "--admin", CLOSED, "--frobnicate"], 2,
                 ["--frobnicate"]),
            Case(f"{command}/port-zero", [*base, "--admin", "127.0.0.1:0"], 2, ["127.0.0.1:0"]),
            Case(f"{command}/port-70000", [*base, "--admin", "127.0.0.1:70000"], 2, ["70000"]),
            Case(f"{command}/port-negative", [*base, "--admin=127.0.0.1:-1"], 2, ["-1"]),
            Case(f"{command}/port-abc", [*base, "--admin", "127.0.0.1:abc"], 2, ["abc"]),
            Case(f"{command}/window-10x", [*base, "--admin", CLOSED, "-t", "10x"], 2,
                 ["--window", "10x"]),
            Case(f"{command}/window-0", [*base, "--admin", CLOSED, "-t", "0"], 2, ["--window"]),
            Case(f"{command}/window-negative", [*base, "--admin", CLOSED, "-t=-1s"], 2,
                 ["--window"]),
            Case(f"{command}/timeout-abc", [*base, "--admin", CLOSED, "--timeout", "abc"], 2,
                 ["--timeout", "abc"]),
            Case(f"{command}/bad-namespace", [*base, "--admin", CLOSED, "-n", "Bad_NS"], 2,
                 ["Bad_NS"]),
            Case(f"{command}/admin-refused", [*base, "--admin", CLOSED, "-t", "100ms"], 1,
                 ["refused"]),
            Case(f"{command}/admin-unresolvable", [*base, "--admin", "{unresolvable}:4191",
                 "-t", "100ms"], 1, ["resolve"]),
            Case(f"{command}/prometheus-refused", [*base, "--prometheus",
                 "http://127.0.0.1:{closed}"], 1, ["refused"]),
            Case(f"{command}/prometheus-not-a-url", [*base, "--prometheus", "ftp:/x"], 2,
                 ["ftp:/x"]),
            Case(f"{command}/prometheus-broken-ipv6", [*base, "--prometheus", "http://[::1"], 2,
                 ["--prometheus", "http://[::1"]),
        ]  # fmt: skip
    # edges parses its options with the same code (meshlet/statargs.py): a sample is enough.
    sample = {"no-source", "port-abc", "window-10x", "admin-refused", "admin-unresolvable"}
    return [c for c in cases if c.id.startswith("stat/") or c.id.split("/")[1] in sample]


def _tap_cases() -> list[Case]:
    tap = ["meshlet", "tap"]
    return [
        Case("tap/no-address", tap, 2, ["ADMIN_OR_TAP_ADDR"]),
        Case("tap/unknown-flag", [*tap, "--frobnicate", "127.0.0.1"], 2, ["--frobnicate"]),
        Case("tap/max-rps-abc", [*tap, "--max-rps", "abc", "127.0.0.1"], 2, ["--max-rps"]),
        Case("tap/max-rps-zero", [*tap, "--max-rps", "0", "127.0.0.1"], 2, ["--max-rps"]),
        Case("tap/refused", [*tap, CLOSED], 1, ["refused"]),
        Case("tap/port-70000", [*tap, "127.0.0.1:70000"], 2, ["70000"]),
        Case("tap/port-abc", [*tap, "127.0.0.1:abc"], 2, ["abc"]),
        Case("tap/unresolvable", [*tap, "{unresolvable}:4190"], 1, ["resolve"]),
    ]  # fmt: skip


CASES = [
    *_help_cases(),
    *_cli_cases(),
    *_inject_cases(),
    *_identity_cases(),
    *_install_check_cases(),
    *_metrics_cases(),
    *_tap_cases(),
]


@pytest.fixture(scope="module")
def outcomes(paths: dict[str, str]) -> dict[str, Outcome]:
    return run_cases(CASES, paths)


@pytest.mark.parametrize("case", [param(case) for case in CASES])
def test_meshlet_command_refuses_bad_input(case: Case, outcomes: dict[str, Outcome]) -> None:
    check(case, outcomes[case.id])
