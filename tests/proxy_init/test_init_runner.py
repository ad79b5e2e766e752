"""Backend choice and error translation, with stand-in iptables scripts on PATH (no root)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from proxy.init.plan import NatState
from proxy.init.runner import Firewall, InitError, apply_commands, select_firewall

EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
NFT_BROKEN = (
    "iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument"
)
NFT_DENIED = (
    "iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: "
    "Permission denied (you must be root)"
)


def _script(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _saves(text: str) -> str:
    return f"cat <<'EOF'\n{text}EOF"


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The stand-ins, then the basic tools they use (cat, sh); the real iptables and nsenter
    # live in /usr/sbin and /usr/bin, ahead of which the stand-ins come.
    monkeypatch.setenv("PATH", f"{tmp_path}:/bin")
    return tmp_path


def test_nft_is_preferred(bin_dir: Path) -> None:
    for mode in ("nft", "legacy"):
        _script(bin_dir, f"iptables-{mode}", "exit 0")
        _script(bin_dir, f"iptables-{mode}-save", _saves(EMPTY_NAT))
    firewall, state = select_firewall("ipv4")
    assert firewall == Firewall("iptables-nft", "iptables-nft-save")
    assert "PREROUTING" in state.chains


def test_broken_nft_falls_back_to_legacy(bin_dir: Path) -> None:
    _script(bin_dir, "iptables-nft", "exit 0")
    _script(bin_dir, "iptables-nft-save", f"echo '{NFT_BROKEN}' >&2; exit 1")
    _script(bin_dir, "iptables-legacy", "exit 0")
    _script(bin_dir, "iptables-legacy-save", _saves(EMPTY_NAT))
    firewall, _ = select_firewall("ipv4")
    assert firewall.binary == "iptables-legacy"


def test_permission_denied_stops_the_search(bin_dir: Path) -> None:
    _script(bin_dir, "iptables-nft", "exit 0")
    _script(bin_dir, "iptables-nft-save", f"echo '{NFT_DENIED}' >&2; exit 4")
    _script(bin_dir, "iptables-legacy", "exit 0")
    _script(bin_dir, "iptables-legacy-save", _saves(EMPTY_NAT))
    with pytest.raises(InitError) as info:
        select_firewall("ipv4")
    assert info.value.reason == "permission_denied"
    assert "NET_ADMIN" in str(info.value)


def test_pinned_mode_does_not_fall_back(bin_dir: Path) -> None:
    _script(bin_dir, "iptables-legacy", "exit 0")
    _script(bin_dir, "iptables-legacy-save", _saves(EMPTY_NAT))
    with pytest.raises(InitError) as info:
        select_firewall("ipv4", "nft")
    assert info.value.reason == "binary_not_found"


def test_ipv6_uses_ip6tables(bin_dir: Path) -> None:
    _script(bin_dir, "ip6tables-nft", "exit 0")
    _script(bin_dir, "ip6tables-nft-save", _saves(EMPTY_NAT))
    firewall, _ = select_firewall("ipv6")
    assert firewall == Firewall("ip6tables-nft", "ip6tables-nft-save")


def test_unreadable_save_output(bin_dir: Path) -> None:
    _script(bin_dir, "iptables-nft", "exit 0")
    _script(bin_dir, "iptables-nft-save", "echo '*nat'; echo 'what is this'")
    with pytest.raises(InitError) as info:
        select_firewall("ipv4", "nft")
    assert info.value.reason == "unreadable_state"


def test_commands_run_in_order_with_lock_wait(bin_dir: Path) -> None:
    log = bin_dir / "calls"
    _script(bin_dir, "iptables-nft", f'echo "$@" >> {log}')
    apply_commands(
        Firewall("iptables-nft", "iptables-nft-save"),
        [("-N", "MESHLET_INIT_OUTPUT"), ("-A", "OUTPUT", "-j", "MESHLET_INIT_OUTPUT")],
    )
    assert log.read_text().splitlines() == [
        "-w 5 -t nat -N MESHLET_INIT_OUTPUT",
        "-w 5 -t nat -A OUTPUT -j MESHLET_INIT_OUTPUT",
    ]


def test_first_failing_command_stops_and_is_named(bin_dir: Path) -> None:
    log = bin_dir / "calls"
    _script(
        bin_dir,
        "iptables-nft",
        f'echo "$@" >> {log}; echo "iptables: Chain already exists." >&2; exit 1',
    )
    with pytest.raises(InitError) as info:
        apply_commands(
            Firewall("iptables-nft", "iptables-nft-save"),
            [("-N", "MESHLET_INIT_OUTPUT"), ("-N", "MESHLET_INIT_REDIRECT")],
        )
    assert info.value.reason == "command_failed"
    assert str(info.value) == (
        "iptables-nft -w 5 -t nat -N MESHLET_INIT_OUTPUT: iptables: Chain already exists."
    )
    assert len(log.read_text().splitlines()) == 1


def test_netns_runs_through_nsenter(bin_dir: Path) -> None:
    log = bin_dir / "calls"
    _script(bin_dir, "nsenter", f"echo \"$@\" >> {log}; cat <<'EOF'\n{EMPTY_NAT}EOF")
    _script(bin_dir, "iptables-nft", "exit 0")
    _script(bin_dir, "iptables-nft-save", "exit 0")
    firewall, state = select_firewall("ipv4", netns="/run/netns/pod")
    assert firewall.netns == "/run/netns/pod"
    assert isinstance(state, NatState)
    assert log.read_text().splitlines() == ["--net=/run/netns/pod -- iptables-nft-save -t nat"]
