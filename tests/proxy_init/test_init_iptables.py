"""``meshlet-proxy-init`` against real iptables, in a fresh network namespace per test."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from proxy.init.rules import InitConfig, build_rules, parse_port_ranges, parse_subnets
from tests.harness import PROXY_INIT, Node, Pod, install_proxy_init

pytestmark = pytest.mark.root

FLAGS = (
    "--outbound-ports-to-ignore",
    "443,5000-5010",
    "--subnets-to-ignore",
    "192.168.0.0/16",
    "--proxy-gid",
    "2103",
)
NON_ROOT = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
CONFIG = InitConfig(
    proxy_gid=2103,
    outbound_ports_to_ignore=parse_port_ranges("443,5000-5010"),
    subnets_to_ignore=parse_subnets("192.168.0.0/16"),
)


def _save(pod: Pod, binary: str = "iptables-nft-save") -> list[str]:
    """The nat table's ``-A`` and chain lines (counters and banners dropped)."""
    text = pod.run([binary, "-t", "nat"])
    return [line for line in text.splitlines() if line.startswith(("-A", ":"))]


def _rules(pod: Pod, binary: str = "iptables-nft-save") -> list[list[str]]:
    return [shlex.split(line) for line in _save(pod, binary) if line.startswith("-A")]


def _expected() -> list[list[str]]:
    return [shlex.split(rule.render()) for rule in build_rules(CONFIG).rules]


def test_apply_installs_exactly_the_built_rules(node: Node) -> None:
    pod = node.add_pod("app")
    install_proxy_init(pod, *FLAGS)
    assert sorted(_rules(pod)) == sorted(_expected())
    chains = {line.split()[0][1:] for line in _save(pod) if line.startswith(":")}
    assert {"MESHLET_INIT_REDIRECT", "MESHLET_INIT_OUTPUT"} <= chains


def test_second_run_changes_nothing(node: Node) -> None:
    pod = node.add_pod("app")
    install_proxy_init(pod, *FLAGS)
    before = _save(pod)
    log = install_proxy_init(pod, *FLAGS, "--log-level", "debug")
    assert "nothing to change" in log
    assert "running iptables" not in log  # not a single command was run
    assert _save(pod) == before


def test_changed_flags_replace_the_rules(node: Node) -> None:
    pod = node.add_pod("app")
    install_proxy_init(pod, *FLAGS)
    install_proxy_init(pod, "--outbound-ports-to-ignore", "25")
    rules = _rules(pod)
    assert sum(1 for rule in rules if rule[1] == "OUTPUT") == 1
    assert sum(1 for rule in rules if rule[1] == "PREROUTING") == 1
    flat = [" ".join(rule) for rule in rules]
    assert not any("443" in line or "2103" in line for line in flat)
    assert any("--dports 25 " in line for line in flat)


def test_remove_leaves_nothing_and_keeps_other_rules(node: Node) -> None:
    pod = node.add_pod("app")
    pod.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.1.2.3/32", "-j", "RETURN"])
    before = _save(pod)
    install_proxy_init(pod, *FLAGS)
    install_proxy_init(pod, "--remove")
    assert _save(pod) == before
    assert "nothing to change" in install_proxy_init(pod, "--remove")


def test_dry_run_prints_rules_and_changes_nothing(node: Node) -> None:
    pod = node.add_pod("app")
    before = _save(pod)
    done = pod.run_result([PROXY_INIT, "--dry-run", *FLAGS])
    assert done.returncode == 0, done.stderr
    assert done.stdout == build_rules(CONFIG).render()
    assert _save(pod) == before
    # The printed rules are valid iptables-restore input that yields the same rules.
    restore = subprocess.run(
        pod.exec_argv(["iptables-nft-restore", "--noflush"]),
        input=done.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    assert sorted(_rules(pod)) == sorted(_expected())
    assert "nothing to change" in install_proxy_init(pod, *FLAGS)


def test_netns_flag_acts_in_that_namespace(node: Node) -> None:
    pod = node.add_pod("app")
    done = subprocess.run(
        [PROXY_INIT, "--netns", pod.name, *FLAGS], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert sorted(_rules(pod)) == sorted(_expected())
    missing = subprocess.run(
        [PROXY_INIT, "--netns", "mlt-no-such-namespace"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "meshlet-proxy-init: error: network namespace /run/netns/mlt-no-such-namespace"
        " does not exist"
    )


def test_legacy_mode(node: Node) -> None:
    pod = node.add_pod("app")
    install_proxy_init(pod, "--iptables-mode", "legacy", *FLAGS)
    assert sorted(_rules(pod, "iptables-legacy-save")) == sorted(_expected())
    assert _rules(pod) == []  # nothing went to nf_tables
    assert "nothing to change" in install_proxy_init(pod, "--iptables-mode", "legacy", *FLAGS)
    install_proxy_init(pod, "--iptables-mode", "legacy", "--remove")
    assert _rules(pod, "iptables-legacy-save") == []


def test_firewall_bin_path(node: Node) -> None:
    pod = node.add_pod("app")
    install_proxy_init(pod, "--firewall-bin-path", "iptables-legacy")
    assert len(_rules(pod, "iptables-legacy-save")) == len(build_rules(InitConfig()).rules)


def test_ipv6_rules(node: Node) -> None:
    pod = node.add_pod("app")
    install_proxy_init(pod, "--ipv6", "--subnets-to-ignore", "fd00::/8")
    rules = [" ".join(rule) for rule in _rules(pod, "ip6tables-nft-save")]
    assert any("-d fd00::/8" in rule for rule in rules)
    assert any("--to-ports 4140" in rule for rule in rules)
    assert _rules(pod) == []  # IPv4 untouched


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", PROXY_INIT],
            "meshlet-proxy-init: error: iptables-nft-save: permission denied: meshlet-proxy-init"
            " needs the NET_ADMIN capability (and NET_RAW for iptables-legacy) in the pod's"
            " network namespace",
            id="no-net-admin",
        ),
        pytest.param(
            [
                *NON_ROOT,
                "--inh-caps=+net_admin",
                "--ambient-caps=+net_admin",
                PROXY_INIT,
                "--iptables-mode",
                "legacy",
            ],
            "meshlet-proxy-init: error: iptables-legacy-save: permission denied",
            id="legacy-without-net-raw",
        ),
        pytest.param(
            [
                *NON_ROOT,
                "--inh-caps=+net_admin,+net_raw",
                "--ambient-caps=+net_admin,+net_raw",
                PROXY_INIT,
                "--iptables-mode",
                "legacy",
            ],
            "meshlet-proxy-init: error: iptables-legacy: cannot open the xtables lock file",
            id="legacy-lock-file",
        ),
        pytest.param(
            [*NON_ROOT, PROXY_INIT],
            "meshlet-proxy-init: error: iptables-nft-save: permission denied",
            id="nobody",
        ),
        pytest.param(
            [PROXY_INIT, "--firewall-bin-path", "/nonexistent/iptables"],
            "meshlet-proxy-init: error: /nonexistent/iptables-save: not found",
            id="no-binary",
        ),
        pytest.param(
            [PROXY_INIT, "--inbound-ports-to-ignore", "80,http"],
            "meshlet-proxy-init: error: invalid port 'http'",
            id="bad-port",
        ),
        pytest.param(
            [PROXY_INIT, "--subnets-to-ignore", "10.0.0.1/8"],
            "meshlet-proxy-init: error: invalid subnet '10.0.0.1/8'",
            id="bad-subnet",
        ),
    ],
)
def test_errors_are_one_clear_line(node: Node, argv: list[str], message: str) -> None:
    pod = node.add_pod("app")
    done = pod.run_result(argv)
    assert done.returncode in {1, 2}
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(message)
    assert "Traceback" not in done.stderr
    assert _rules(pod) == []
    assert _rules(pod, "iptables-legacy-save") == []


def _path_with(tmp_path: Path, *binaries: str) -> str:
    """A PATH holding only ``binaries`` (links to the real ones) and nsenter/setpriv."""
    for name in (*binaries, "nsenter"):
        real = shutil.which(name)
        assert real is not None, name
        (tmp_path / name).symlink_to(real)
    return str(tmp_path)


def test_auto_mode_falls_back_to_legacy(node: Node, tmp_path: Path) -> None:
    pod = node.add_pod("app")
    path = _path_with(tmp_path, "iptables-legacy", "iptables-legacy-save")
    done = pod.run_result(["env", f"PATH={path}", PROXY_INIT])
    assert done.returncode == 0, done.stderr
    assert "installed meshlet-init rules with iptables-legacy" in done.stderr
    assert len(_rules(pod, "iptables-legacy-save")) == len(build_rules(InitConfig()).rules)
    assert _rules(pod) == []


def test_no_backend_at_all(node: Node, tmp_path: Path) -> None:
    pod = node.add_pod("app")
    done = pod.run_result(["env", f"PATH={_path_with(tmp_path)}", PROXY_INIT])
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "meshlet-proxy-init: error: no usable iptables backend:"
        " iptables-nft-save: not found (install iptables or pass --firewall-bin-path);"
        " iptables-legacy-save: not found (install iptables or pass --firewall-bin-path);"
        " iptables-save: not found (install iptables or pass --firewall-bin-path)"
    )


def test_non_root_user_with_net_admin_like_the_init_container(node: Node) -> None:
    """runAsUser 65534 with capabilities NET_ADMIN and NET_RAW, as the injected container."""
    pod = node.add_pod("app")
    caps = "+net_admin,+net_raw"
    done = pod.run_result([*NON_ROOT, f"--inh-caps={caps}", f"--ambient-caps={caps}", PROXY_INIT])
    assert done.returncode == 0, done.stderr
    assert len(_rules(pod)) == len(build_rules(InitConfig()).rules)


@pytest.mark.parametrize("mode", ["nft", "legacy"])
def test_many_ports_and_subnets_apply_and_stay_idempotent(node: Node, mode: str) -> None:
    """More than 15 ports (split across multiport rules), ranges and subnets round-trip through
    the kernel exactly, so the second run still changes nothing."""
    pod = node.add_pod("app")
    ports = ",".join(str(port) for port in range(1000, 1040)) + ",2000-2100,3000:3005"
    flags = (
        *("--iptables-mode", mode, "--inbound-ports-to-ignore", ports),
        *("--outbound-ports-to-ignore", ports, "--subnets-to-ignore", "10.1.0.0/16,192.0.2.7"),
    )
    install_proxy_init(pod, *flags)
    save = f"iptables-{mode}-save"
    built = build_rules(
        InitConfig(
            inbound_ports_to_ignore=parse_port_ranges(ports),
            outbound_ports_to_ignore=parse_port_ranges(ports),
            subnets_to_ignore=parse_subnets("10.1.0.0/16,192.0.2.7"),
        )
    )
    assert sorted(_rules(pod, save)) == sorted(shlex.split(rule.render()) for rule in built.rules)
    # 44 slots outbound (40 ports + 2 ranges) -> 3 rules; inbound adds 4190,4191 -> 4 rules.
    assert sum(1 for rule in _rules(pod, save) if "multiport" in rule) == 7
    assert "nothing to change" in install_proxy_init(pod, *flags)
    install_proxy_init(pod, "--iptables-mode", mode, "--remove")
    assert _rules(pod, save) == []
