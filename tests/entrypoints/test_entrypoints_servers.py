"""The long-running programs with bad configuration: they must refuse to start, at once, with one
line naming the flag, variable or file and why (never a traceback, never serving anyway).

Every case listens on 127.0.0.1 only (or a port that cannot be used), so even a program that
wrongly starts serves nothing beyond loopback before the runner kills it. ``meshlet-proxy-init``
runs with ``--dry-run`` only: nothing here touches the machine's own iptables.
"""

from __future__ import annotations

import pytest

from tests.entrypoints.entrypoint_run import Case, Outcome, check, param, run_cases

T = "{tmp}"
_WEBHOOK = ["meshlet-webhook", "--listen", "127.0.0.1:0", "--cluster", "{cluster}"]
_GOOD_TLS = ["--tls-cert", f"{T}/tls-a/tls.crt", "--tls-key", f"{T}/tls-a/tls.key"]
_IDENTITY = ["meshlet-identity", "--listen-addr", "127.0.0.1:{closed}", "--token-source",
             f"{T}/tokens"]  # fmt: skip
_DESTINATION = ["meshlet-destination", "--listen-addr", "127.0.0.1:0", "--source",
                f"{T}/missing-endpoints.yaml"]  # fmt: skip
_INIT = ["meshlet-proxy-init", "--dry-run"]


def _pki(directory: str) -> list[str]:
    return [
        "--issuer-cert-file", f"{T}/{directory}/crt.pem",
        "--issuer-key-file", f"{T}/{directory}/key.pem",
        "--trust-anchors-file", f"{T}/{directory}/ca-bundle.crt",
    ]  # fmt: skip


def _webhook_cases() -> list[Case]:
    return [
        Case("webhook/--help", ["meshlet-webhook", "--help"], 0),
        Case("webhook/no-certificate", _WEBHOOK, 2, ["--tls-cert"]),
        Case("webhook/cert-missing", [*_WEBHOOK, "--tls-cert", f"{T}/missing.crt",
             "--tls-key", f"{T}/tls-a/tls.key"], 2, ["missing.crt"]),
        Case("webhook/cluster-file-binary", ["meshlet-webhook", *_GOOD_TLS, "--listen",
             "127.0.0.1:0", "--cluster", f"{T}/binary.yaml"], 2, ["binary.yaml", "UTF-8"]),
        Case("webhook/anchors-not-pem", [*_WEBHOOK, *_GOOD_TLS, "--trust-anchors",
             f"{T}/notpem.crt"], 2, ["notpem.crt"]),
        Case("webhook/port-in-use", ["meshlet-webhook", *_GOOD_TLS, "--cluster", "{cluster}",
             "--listen", "127.0.0.1:{busy}"], 2, ["127.0.0.1:{busy}", "in use"]),
    ]  # fmt: skip


def _identity_cases() -> list[Case]:
    return [
        Case("identity-svc/--help", ["meshlet-identity", "--help"], 0),
        Case("identity-svc/lifetime-env-zero", _IDENTITY, 2,
             ["MESHLET_IDENTITY_LEAF_LIFETIME"], env={"MESHLET_IDENTITY_LEAF_LIFETIME": "0s"}),
        Case("identity-svc/lifetime-too-long", [*_IDENTITY, "--leaf-lifetime", "100000000d"],
             2, ["--leaf-lifetime", "100 years"]),
        Case("identity-svc/port-in-use", ["meshlet-identity", *_pki("pki"), "--token-source",
             f"{T}/tokens", "--listen-addr", "127.0.0.1:{busy}"], 1,
             ["127.0.0.1:{busy}", "in use"]),
        Case("identity-svc/listen-unresolvable", ["meshlet-identity", *_pki("pki"),
             "--token-source", f"{T}/tokens", "--listen-addr", "{unresolvable}:8080"], 1,
             ["cannot listen"]),
        Case("identity-svc/issuer-missing", [*_IDENTITY, *_pki("missing")], 1, ["crt.pem"]),
        Case("identity-svc/key-mismatch", [*_IDENTITY, *_pki("pki-mismatch")], 1, ["key"]),
        Case("identity-svc/anchors-not-pem", [*_IDENTITY, *_pki("pki-notpem-anchors")], 1,
             ["ca-bundle.crt"]),
        Case("identity-svc/token-file-missing", ["meshlet-identity", "--listen-addr",
             "127.0.0.1:{closed}", *_pki("pki"), "--token-source", f"{T}/missing-tokens"], 1,
             ["missing-tokens"]),
    ]  # fmt: skip


def _destination_cases() -> list[Case]:
    return [
        Case("destination/--help", ["meshlet-destination", "--help"], 0),
        Case("destination/no-certificate", _DESTINATION, 2, ["--tls-cert"]),
        Case("destination/cert-missing", [*_DESTINATION, "--tls-cert", f"{T}/missing.crt",
             "--tls-key", f"{T}/tls-a/tls.key"], 2, ["missing.crt"]),
        Case("destination/key-mismatch", [*_DESTINATION, "--tls-cert", f"{T}/tls-a/tls.crt",
             "--tls-key", f"{T}/tls-b/tls.key"], 2, ["tls.key", "does not belong"]),
        Case("destination/keepalive-10x", [*_DESTINATION, *_GOOD_TLS, "--keepalive-interval",
             "10x"], 2, ["keepalive-interval", "10x"]),
        Case("destination/port-in-use", [*_DESTINATION, *_GOOD_TLS, "--source", "{cluster}",
             "--listen-addr", "127.0.0.1:{busy}"], 1,
             ["cannot listen on 127.0.0.1:{busy}", "in use"]),
        Case("destination/source-missing", [*_DESTINATION, *_GOOD_TLS], 2,
             ["missing-endpoints.yaml"]),
    ]  # fmt: skip


_PROXY_LOOPBACK = {
    f"MESHLET_PROXY_{name}_LISTEN_ADDR": "127.0.0.1:0"
    for name in ("INBOUND", "OUTBOUND", "ADMIN", "TAP")
}
# variable -> a value of the wrong type or out of range: a sample through the real process (each
# start-up loader once); every variable and value is checked in-process by
# test_entrypoints_proxy_settings.py, key mismatches and unreadable PEM by ..._tls_files.py.
_PROXY_BAD = {
    "INBOUND_LISTEN_ADDR": "localhost:4143",
    "INBOUND_PORTS": "0",
    "DETECT_TIMEOUT": "10x",
    "DESTINATION_SVC_ADDR": "abc",
}


def _proxy_cases() -> list[Case]:
    cases = [
        Case("proxy/--help", ["meshlet-proxy", "--help"], 0),
        Case("proxy/an-argument", ["meshlet-proxy", "frobnicate"], 2, ["MESHLET_PROXY_"]),
        Case("proxy/keepalive-timeout-not-shorter", ["meshlet-proxy"], 2,
             ["MESHLET_PROXY_HTTP2_KEEPALIVE_TIMEOUT"],
             env={**_PROXY_LOOPBACK, "MESHLET_PROXY_HTTP2_KEEPALIVE_TIMEOUT": "20s"}),
        Case("proxy/admin-port-in-use", ["meshlet-proxy"], 1, ["cannot listen", "in use"],
             env={**_PROXY_LOOPBACK, "MESHLET_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:{busy}"}),
        Case("proxy/anchors-not-pem", ["meshlet-proxy"], 2,
             ["MESHLET_PROXY_IDENTITY_TRUST_ANCHORS"],
             env={**_PROXY_LOOPBACK, "MESHLET_PROXY_IDENTITY_TRUST_ANCHORS": "not PEM",
                  "MESHLET_PROXY_IDENTITY_LOCAL_NAME": "web.shop.serviceaccount.identity."
                  "meshlet.cluster.local"}),
    ]  # fmt: skip
    for suffix, value in _PROXY_BAD.items():
        variable = f"MESHLET_PROXY_{suffix}"
        env = {**_PROXY_LOOPBACK, variable: value}
        if suffix.startswith("DESTINATION_"):
            env["MESHLET_PROXY_IDENTITY_TRUST_ANCHORS"] = "{anchors_pem}"
        cases.append(Case(f"proxy/{suffix}={value}", ["meshlet-proxy"], 2, [variable], env=env))
    return cases


def _init_cases() -> list[Case]:
    bad = [
        ("incoming-port-0", ["--incoming-proxy-port", "0"], "incoming-proxy-port"),
        ("incoming-port-70000", ["--incoming-proxy-port", "70000"], "incoming-proxy-port"),
        ("incoming-port-negative", ["--incoming-proxy-port=-1"], "incoming-proxy-port"),
        ("incoming-port-abc", ["--incoming-proxy-port", "abc"], "incoming-proxy-port"),
        ("outgoing-port-10x", ["--outgoing-proxy-port", "10x"], "outgoing-proxy-port"),
        ("same-proxy-ports", ["--incoming-proxy-port", "4140"], "4140"),
        ("proxy-uid-negative", ["--proxy-uid=-1"], "proxy-uid"),
        ("proxy-gid-abc", ["--proxy-gid", "abc"], "proxy-gid"),
        ("proxy-uid-too-large", ["--proxy-uid", "4294967295"], "proxy-uid"),
        ("inbound-range-backwards", ["--inbound-ports-to-ignore", "10-5"], "10-5"),
        ("inbound-ports-abc", ["--inbound-ports-to-ignore", "80,abc"], "abc"),
        ("inbound-port-70000", ["--inbound-ports-to-ignore", "70000"], "70000"),
        ("outbound-port-0", ["--outbound-ports-to-ignore", "0"], "0"),
        ("outbound-range-open", ["--outbound-ports-to-ignore", "80-"], "80-"),
        ("subnet-prefix-33", ["--subnets-to-ignore", "10.0.0.0/33"], "10.0.0.0/33"),
        ("subnet-not-a-subnet", ["--subnets-to-ignore", "nonsense"], "nonsense"),
        ("subnet-wrong-family", ["--subnets-to-ignore", "fd00::/8"], "fd00::/8"),
        ("ipv6-maybe", ["--ipv6=maybe"], "maybe"),
        ("mode-unknown", ["--iptables-mode", "fancy"], "fancy"),
        ("dry-run-and-remove", ["--remove"], "--remove"),
        ("unknown-flag", ["--frobnicate"], "--frobnicate"),
    ]
    cases = [
        Case("proxy-init/--help", ["meshlet-proxy-init", "--help"], 0),
        Case("proxy-init/disk-full", _INIT, 1, ["no space left"], stdout_to="/dev/full"),
    ]
    cases += [Case(f"proxy-init/{name}", [*_INIT, *args], 2, [text]) for name, args, text in bad]
    return cases


CASES = [
    *_webhook_cases(),
    *_identity_cases(),
    *_destination_cases(),
    *_proxy_cases(),
    *_init_cases(),
]


@pytest.fixture(scope="module")
def outcomes(paths: dict[str, str]) -> dict[str, Outcome]:
    return run_cases(CASES, paths)


@pytest.mark.parametrize("case", [param(case) for case in CASES])
def test_server_refuses_bad_configuration(case: Case, outcomes: dict[str, Outcome]) -> None:
    check(case, outcomes[case.id])
