"""``meshlet-proxy-init``: install (or remove) the pod's traffic interception rules.

Runs once as the ``meshlet-init`` init container, with NET_ADMIN and NET_RAW, before the
application starts. Flags follow Linkerd's proxy-init so existing knowledge carries over:

    meshlet-proxy-init --incoming-proxy-port 4143 --outgoing-proxy-port 4140 \
        --proxy-uid 2102 --inbound-ports-to-ignore 4190,4191 --subnets-to-ignore 10.0.0.0/8

``--dry-run`` prints the rules (as ``iptables-restore --noflush`` input) and touches nothing;
``--remove`` deletes everything this tool installed. Exit status: 0 done, 1 failed (one line
on stderr says why), 2 bad flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from meshlet.cli import guard_output
from meshlet.logs import configure_logging
from proxy.init.plan import plan_apply, plan_remove
from proxy.init.rules import InitConfig, build_rules, parse_port_ranges, parse_subnets
from proxy.init.runner import InitError, apply_commands, netns_path, select_firewall

__all__ = ["main", "parser"]

log = logging.getLogger("meshlet.proxy.init")
_PROG = "meshlet-proxy-init"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Redirect the pod's TCP traffic through meshlet-proxy with iptables (nat).",
    )
    p.add_argument(
        "--incoming-proxy-port",
        type=int,
        default=InitConfig.incoming_proxy_port,
        metavar="PORT",
        help="where inbound connections are redirected (default %(default)s)",
    )
    p.add_argument(
        "--outgoing-proxy-port",
        type=int,
        default=InitConfig.outgoing_proxy_port,
        metavar="PORT",
        help="where outbound connections are redirected (default %(default)s)",
    )
    p.add_argument(
        "--proxy-uid",
        type=int,
        default=InitConfig.proxy_uid,
        metavar="UID",
        help="the proxy's user, whose connections are not redirected (default %(default)s)",
    )
    p.add_argument(
        "--proxy-gid", type=int, default=None, metavar="GID", help="also skip this group's traffic"
    )
    p.add_argument(
        "--inbound-ports-to-ignore",
        action="append",
        default=[],
        metavar="PORTS",
        help="ports (and a-b ranges) not redirected inbound; 4190,4191 are always skipped",
    )
    p.add_argument(
        "--outbound-ports-to-ignore",
        action="append",
        default=[],
        metavar="PORTS",
        help="destination ports not redirected outbound",
    )
    p.add_argument(
        "--subnets-to-ignore",
        action="append",
        default=[],
        metavar="CIDRS",
        help="traffic from (inbound) and to (outbound) these subnets bypasses the proxy",
    )
    p.add_argument(
        "--ipv6",
        nargs="?",
        const=True,
        default=False,
        type=_boolean,
        metavar="BOOL",
        help="write ip6tables rules instead of iptables (--ipv6, --ipv6=true|false)",
    )
    p.add_argument(
        "--iptables-mode",
        choices=("auto", "nft", "legacy", "plain"),
        default="auto",
        help="auto: iptables-nft, else iptables-legacy, else iptables",
    )
    p.add_argument(
        "--firewall-bin-path", default=None, metavar="PATH", help="iptables binary (overrides mode)"
    )
    p.add_argument(
        "--firewall-save-bin-path", default=None, metavar="PATH", help="default: <bin-path>-save"
    )
    p.add_argument("--netns", default=None, help="network namespace name or path to act in")
    p.add_argument("--dry-run", action="store_true", help="print the rules; change nothing")
    p.add_argument("--remove", action="store_true", help="remove every rule and chain installed")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warn", "error"))
    return p


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in {"true", "1", "yes"}:
        return True
    if value in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level)
    try:
        config = InitConfig(
            incoming_proxy_port=args.incoming_proxy_port,
            outgoing_proxy_port=args.outgoing_proxy_port,
            proxy_uid=args.proxy_uid,
            proxy_gid=args.proxy_gid,
            inbound_ports_to_ignore=parse_port_ranges(",".join(args.inbound_ports_to_ignore)),
            outbound_ports_to_ignore=parse_port_ranges(",".join(args.outbound_ports_to_ignore)),
            subnets_to_ignore=parse_subnets(",".join(args.subnets_to_ignore)),
            family="ipv6" if args.ipv6 else "ipv4",
        )
    except ValueError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run and args.remove:
        print(f"{_PROG}: error: --dry-run and --remove cannot be combined", file=sys.stderr)
        return 2
    ruleset = build_rules(config)
    if args.dry_run:

        def show() -> int:
            sys.stdout.write(ruleset.render())
            return 0

        return guard_output(_PROG, show)
    netns = netns_path(args.netns) if args.netns else None
    if netns is not None and not os.path.exists(netns):
        print(f"{_PROG}: error: network namespace {netns} does not exist", file=sys.stderr)
        return 1
    try:
        firewall, state = select_firewall(
            config.family,
            args.iptables_mode,
            binary=args.firewall_bin_path,
            save_binary=args.firewall_save_bin_path,
            netns=netns,
        )
        commands = plan_remove(state) if args.remove else plan_apply(state, ruleset)
        apply_commands(firewall, commands)
    except InitError as error:
        print(f"{_PROG}: error: {error}", file=sys.stderr)
        return 1
    action = "removed" if args.remove else "installed"
    if commands:
        log.info(
            "%s meshlet-init rules with %s (%d commands)", action, firewall.binary, len(commands)
        )
    else:
        log.info("nothing to change: rules already %s (%s)", action, firewall.binary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
