"""The ``meshlet-proxy-init`` command line, without touching iptables (``--dry-run``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.init.__main__ import main
from proxy.init.rules import InitConfig, build_rules, parse_port_ranges, parse_subnets


def test_dry_run_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dry-run"]) == 0
    assert capsys.readouterr().out == build_rules(InitConfig()).render()


def test_dry_run_with_linkerd_style_flags(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        *("--incoming-proxy-port", "4143", "--outgoing-proxy-port", "4140"),
        *("--proxy-uid", "2102", "--inbound-ports-to-ignore", "4190,4191,4567,4568"),
        *("--outbound-ports-to-ignore", "4567,4568", "--outbound-ports-to-ignore", "443"),
        *("--subnets-to-ignore", "10.0.0.0/8", "--ipv6=false", "--dry-run"),
    ]
    assert main(argv) == 0
    expected = InitConfig(
        inbound_ports_to_ignore=parse_port_ranges("4567,4568"),
        outbound_ports_to_ignore=parse_port_ranges("443,4567,4568"),
        subnets_to_ignore=parse_subnets("10.0.0.0/8"),
    )
    assert capsys.readouterr().out == build_rules(expected).render()


@pytest.mark.parametrize("flag", ["--ipv6", "--ipv6=true", "--ipv6=1"])
def test_ipv6_flag(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([flag, "--subnets-to-ignore", "fd00::/8", "--dry-run"]) == 0
    assert "-d fd00::/8" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--inbound-ports-to-ignore", "0"], "invalid port range 0-0", id="port-0"),
        pytest.param(["--incoming-proxy-port", "70000"], "incoming-proxy-port 70000", id="port"),
        pytest.param(["--proxy-uid", "-5"], "proxy-uid -5 is not a user or group id", id="uid"),
        pytest.param(["--subnets-to-ignore", "fd00::/8"], "not an ipv4 subnet", id="family"),
        pytest.param(["--remove"], "--dry-run and --remove cannot be combined", id="both"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("meshlet-proxy-init: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_unparseable_number_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--proxy-uid", "proxy", "--dry-run"])
    assert info.value.code == 2
    assert "argument --proxy-uid: invalid int value: 'proxy'" in capsys.readouterr().err


def test_docs_show_the_real_dry_run_output(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/proxy-init.md's sample is what the command prints for the flags it names."""
    docs = (Path(__file__).parents[2] / "docs" / "proxy-init.md").read_text()
    flags = (
        "--inbound-ports-to-ignore 25 --outbound-ports-to-ignore 443,5000-5010"
        " --subnets-to-ignore 169.254.0.0/16"
    )
    assert f"`{flags}`" in docs
    assert main([*flags.split(), "--dry-run"]) == 0
    assert f"```\n{capsys.readouterr().out}```" in docs
