"""Authorities, row by row: what each form resolves to, and why the others are refused."""

from __future__ import annotations

import pytest

from destination.authority import (
    REASONS,
    AuthorityRefused,
    IPTarget,
    ServiceTarget,
    parse_authority,
)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        pytest.param(
            "web.shop.svc.cluster.local:8080", ServiceTarget("shop", "web", 8080), id="service"
        ),
        pytest.param(
            "WEB.Shop.svc.cluster.local.:8080", ServiceTarget("shop", "web", 8080), id="case+dot"
        ),
        pytest.param("web.shop.svc.cluster.local", ServiceTarget("shop", "web", 80), id="port-80"),
        pytest.param(
            "web-0.web.shop.svc.cluster.local:5432",
            ServiceTarget("shop", "web", 5432, hostname="web-0"),
            id="statefulset-pod",
        ),
        pytest.param("10.96.0.10:8080", IPTarget("10.96.0.10", 8080), id="ipv4"),
        pytest.param("[fd00::10]:8080", IPTarget("fd00::10", 8080), id="ipv6"),
        pytest.param("[FD00:0::10]", IPTarget("fd00::10", 80), id="ipv6-normalised"),
        pytest.param("10.0.0.1:65535", IPTarget("10.0.0.1", 65535), id="highest-port"),
    ],
)
def test_accepted(authority: str, expected: object) -> None:
    assert parse_authority(authority, cluster_domain="cluster.local") == expected


@pytest.mark.parametrize(
    ("authority", "reason"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("   ", "empty", id="blank"),
        pytest.param("a" * 300 + ":80", "too_long", id="too-long"),
        pytest.param("web.shop.svc.cluster.local:http", "bad_port", id="named-port"),
        pytest.param("web.shop.svc.cluster.local:", "bad_port", id="empty-port"),
        pytest.param("web.shop.svc.cluster.local:-1", "bad_port", id="negative-port"),
        pytest.param("web.shop.svc.cluster.local:0", "port_out_of_range", id="port-0"),
        pytest.param("10.0.0.1:65536", "port_out_of_range", id="port-65536"),
        pytest.param("10.0.0.1:123456", "bad_port", id="port-6-digits"),
        pytest.param("[::1", "bad_ip", id="unclosed-bracket"),
        pytest.param("[nope]:80", "bad_ip", id="bracketed-name"),
        pytest.param("[::1]x", "bad_port", id="junk-after-bracket"),
        pytest.param("0.0.0.0:80", "unspecified_ip", id="unspecified-v4"),
        pytest.param("[::]:80", "unspecified_ip", id="unspecified-v6"),
        pytest.param("fd00::1:80", "bad_label", id="unbracketed-ipv6"),
        pytest.param("web_1.shop.svc.cluster.local:80", "bad_label", id="underscore"),
        pytest.param("-web.shop.svc.cluster.local:80", "bad_label", id="leading-dash"),
        pytest.param("web..svc.cluster.local:80", "bad_label", id="empty-label"),
        pytest.param("example.com:443", "not_cluster_name", id="external-name"),
        pytest.param("web.shop.svc.other.domain:80", "not_cluster_name", id="other-domain"),
        pytest.param("shop.svc.cluster.local:80", "not_cluster_name", id="no-namespace"),
        pytest.param("a.b.web.shop.svc.cluster.local:80", "not_cluster_name", id="too-deep"),
        pytest.param("web.shop:80", "not_cluster_name", id="short-name"),
    ],
)
def test_refused(authority: str, reason: str) -> None:
    refused = parse_authority(authority, cluster_domain="cluster.local")
    assert isinstance(refused, AuthorityRefused)
    assert refused.reason == reason
    assert REASONS[reason] in refused.message


def test_other_cluster_domain() -> None:
    target = parse_authority("web.shop.svc.example.org:80", cluster_domain="example.org")
    assert target == ServiceTarget("shop", "web", 80)
