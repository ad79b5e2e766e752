"""The pure rule builder, row by row."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.init.rules import (
    INBOUND_CHAIN,
    OUTBOUND_CHAIN,
    InitConfig,
    PortRange,
    build_rules,
    chunk_ports,
    parse_port_ranges,
    parse_subnets,
)

DEFAULT_RULES = [
    "-A MESHLET_INIT_REDIRECT -p tcp -m multiport --dports 4190,4191"
    ' -m comment --comment "meshlet-init/ignore-port-4190,4191" -j RETURN',
    "-A MESHLET_INIT_REDIRECT -p tcp"
    ' -m comment --comment "meshlet-init/redirect-all-incoming-to-proxy-port"'
    " -j REDIRECT --to-ports 4143",
    '-A PREROUTING -m comment --comment "meshlet-init/install-prerouting" -j MESHLET_INIT_REDIRECT',
    "-A MESHLET_INIT_OUTPUT -m owner --uid-owner 2102"
    ' -m comment --comment "meshlet-init/ignore-proxy-user-id" -j RETURN',
    '-A MESHLET_INIT_OUTPUT -o lo -m comment --comment "meshlet-init/ignore-loopback" -j RETURN',
    "-A MESHLET_INIT_OUTPUT -p tcp"
    ' -m comment --comment "meshlet-init/redirect-all-outgoing-to-proxy-port"'
    " -j REDIRECT --to-ports 4140",
    '-A OUTPUT -m comment --comment "meshlet-init/install-output" -j MESHLET_INIT_OUTPUT',
]


def test_defaults_row_by_row() -> None:
    rules = build_rules(InitConfig())
    assert [rule.render() for rule in rules.rules] == DEFAULT_RULES
    assert rules.chains == (INBOUND_CHAIN, OUTBOUND_CHAIN)


def test_render_is_restore_input() -> None:
    text = build_rules(InitConfig()).render()
    lines = text.splitlines()
    assert lines[:3] == ["*nat", ":MESHLET_INIT_REDIRECT - [0:0]", ":MESHLET_INIT_OUTPUT - [0:0]"]
    assert lines[3:-1] == DEFAULT_RULES
    assert lines[-1] == "COMMIT"


def test_every_rule_has_a_unique_comment_name() -> None:
    config = InitConfig(
        proxy_gid=2103,
        inbound_ports_to_ignore=parse_port_ranges(",".join(str(p) for p in range(1, 40))),
        outbound_ports_to_ignore=parse_port_ranges("443"),
        subnets_to_ignore=parse_subnets("10.0.0.0/8,192.168.0.0/16"),
    )
    rules = build_rules(config).rules
    names = [(rule.chain, rule.name) for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        comment = rule.spec[rule.spec.index("--comment") + 1]
        assert comment == f"meshlet-init/{rule.name}"
        assert rule.spec[-2:] != ("--comment", comment)  # the target comes last


def test_custom_ports_uid_gid() -> None:
    rules = build_rules(
        InitConfig(incoming_proxy_port=5143, outgoing_proxy_port=5140, proxy_uid=1000, proxy_gid=7)
    )
    by_name = {rule.name: rule for rule in rules.rules}
    assert by_name["redirect-all-incoming-to-proxy-port"].spec[-1] == "5143"
    assert by_name["redirect-all-outgoing-to-proxy-port"].spec[-1] == "5140"
    assert by_name["ignore-proxy-user-id"].spec[:4] == ("-m", "owner", "--uid-owner", "1000")
    assert by_name["ignore-proxy-group-id"].spec[:4] == ("-m", "owner", "--gid-owner", "7")
    outbound = [rule.name for rule in rules.in_chain(OUTBOUND_CHAIN)]
    assert outbound.index("ignore-proxy-group-id") == outbound.index("ignore-proxy-user-id") + 1


def test_inbound_skips_always_include_admin_and_tap() -> None:
    rules = build_rules(InitConfig(inbound_ports_to_ignore=parse_port_ranges("8080,4191")))
    first = rules.in_chain(INBOUND_CHAIN)[0]
    assert first.name == "ignore-port-4190,4191,8080"
    assert "4190,4191,8080" in first.spec


def test_outbound_order_uid_loopback_ports_subnets_redirect() -> None:
    rules = build_rules(
        InitConfig(
            outbound_ports_to_ignore=parse_port_ranges("443,5000-5010"),
            subnets_to_ignore=parse_subnets("10.96.0.0/12"),
        )
    )
    assert [rule.name for rule in rules.in_chain(OUTBOUND_CHAIN)] == [
        "ignore-proxy-user-id",
        "ignore-loopback",
        "ignore-port-443,5000:5010",
        "ignore-subnet-10.96.0.0/12",
        "redirect-all-outgoing-to-proxy-port",
    ]
    subnet_out = rules.in_chain(OUTBOUND_CHAIN)[3]
    assert subnet_out.spec[:2] == ("-d", "10.96.0.0/12")
    subnet_in = [r for r in rules.in_chain(INBOUND_CHAIN) if r.name.startswith("ignore-subnet")]
    assert subnet_in[0].spec[:2] == ("-s", "10.96.0.0/12")


def test_redirect_is_last_and_jump_after_chain_rules() -> None:
    rules = build_rules(InitConfig(subnets_to_ignore=parse_subnets("172.16.0.0/12"))).rules
    chains = [rule.chain for rule in rules]
    assert chains.index("PREROUTING") > max(i for i, c in enumerate(chains) if c == INBOUND_CHAIN)
    assert chains[-1] == "OUTPUT"
    assert rules[-2].name == "redirect-all-outgoing-to-proxy-port"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("80", ["80"], id="one"),
        pytest.param("443, 80 ,80", ["80", "443"], id="sorted-deduplicated"),
        pytest.param("5000-5010", ["5000:5010"], id="dash-range"),
        pytest.param("5000:5010", ["5000:5010"], id="colon-range"),
        pytest.param("5000-5010,5005-5020", ["5000:5020"], id="overlap-merged"),
        pytest.param("4190,4191", ["4190", "4191"], id="adjacent-kept"),
        pytest.param("7-7", ["7"], id="degenerate-range"),
        pytest.param("1,65535", ["1", "65535"], id="bounds"),
    ],
)
def test_parse_port_ranges(text: str, expected: list[str]) -> None:
    assert [port.render() for port in parse_port_ranges(text)] == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("0", id="zero"),
        pytest.param("65536", id="too-big"),
        pytest.param("http", id="name"),
        pytest.param("10-5", id="reversed"),
        pytest.param("-5", id="open-start"),
        pytest.param("5-", id="open-end"),
        pytest.param("1-2-3", id="three-parts"),
        pytest.param("+80", id="sign"),
    ],
)
def test_parse_port_ranges_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_port_ranges(text)


def _ports(n: int) -> list[PortRange]:
    return [PortRange(p, p) for p in range(1000, 1000 + n)]


@pytest.mark.parametrize(
    ("ports", "sizes"),
    [
        pytest.param([], [], id="none"),
        pytest.param(_ports(15), [15], id="exactly-15"),
        pytest.param(_ports(16), [15, 1], id="16-split"),
        pytest.param(_ports(31), [15, 15, 1], id="31"),
        pytest.param([PortRange(1, 2)] * 7 + [PortRange(9, 9)], [8], id="ranges-count-double"),
        pytest.param([PortRange(1, 2)] * 8, [7, 1], id="range-overflows"),
    ],
)
def test_chunk_ports_fits_multiport(ports: list[PortRange], sizes: list[int]) -> None:
    chunks = chunk_ports(ports)
    assert [len(chunk) for chunk in chunks] == sizes
    assert all(sum(port.slots for port in chunk) <= 15 for chunk in chunks)


def test_many_ports_become_several_rules() -> None:
    ports = parse_port_ranges("1-40," + ",".join(str(p) for p in range(100, 130)))
    rules = build_rules(InitConfig(outbound_ports_to_ignore=ports)).in_chain(OUTBOUND_CHAIN)
    port_rules = [rule for rule in rules if rule.name.startswith("ignore-port-")]
    assert len(port_rules) == 3  # 1:40 (2 slots) + 13 ports, 15 ports, 2 ports
    listed = ",".join(rule.spec[rule.spec.index("--dports") + 1] for rule in port_rules)
    assert listed.split(",") == ["1:40", *(str(p) for p in range(100, 130))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("10.0.0.0/8", ["10.0.0.0/8"]),
        ("10.0.0.0/8, 10.0.0.0/8,192.168.1.0/24", ["10.0.0.0/8", "192.168.1.0/24"]),
        ("fd00::/8", ["fd00::/8"]),
        ("10.1.2.3", ["10.1.2.3/32"]),
    ],
)
def test_parse_subnets(text: str, expected: list[str]) -> None:
    assert [str(net) for net in parse_subnets(text)] == expected


@pytest.mark.parametrize("text", ["10.0.0.1/8", "10.0.0.0/33", "nope", "10.0.0.0/8/1"])
def test_parse_subnets_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid subnet"):
        parse_subnets(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"incoming_proxy_port": 0}, "incoming-proxy-port", id="inbound-port"),
        pytest.param({"outgoing_proxy_port": 70000}, "outgoing-proxy-port", id="outbound-port"),
        pytest.param({"proxy_uid": -1}, "proxy-uid", id="uid"),
        pytest.param({"proxy_gid": -2}, "proxy-gid", id="gid"),
        pytest.param(
            {"subnets_to_ignore": (ipaddress.ip_network("fd00::/8"),)}, "not an ipv4", id="family"
        ),
    ],
)
def test_config_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InitConfig(**kwargs)  # type: ignore[arg-type]


def test_ipv6_family_takes_ipv6_subnets() -> None:
    config = InitConfig(family="ipv6", subnets_to_ignore=parse_subnets("fd00::/8"))
    names = [rule.name for rule in build_rules(config).rules]
    assert "ignore-subnet-fd00::/8" in names
