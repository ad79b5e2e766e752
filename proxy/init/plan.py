"""From the kernel's current nat table to the iptables commands that bring it to our rules.

``parse_save`` reads ``iptables-save -t nat`` output into ``NatState``. ``plan_apply`` compares
that state with a ``RuleSet`` and returns the commands to run: none at all when our chains
already hold exactly our rules and each built-in chain holds exactly our one jump (a second run
changes nothing). Otherwise it removes every jump to our chains, creates or flushes the chains,
and appends the rules and jumps again, so a half-applied or outdated set is replaced whole.
``plan_remove`` undoes everything: jumps deleted, chains flushed and deleted.

A command is the argument list that follows ``<iptables> -t nat`` (``("-N", "CHAIN")``).
Pure functions only; ``runner.py`` runs the commands.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass

from proxy.init.rules import COMMENT_PREFIX, INBOUND_CHAIN, OUTBOUND_CHAIN, RuleSet

__all__ = [
    "OUR_CHAINS",
    "Command",
    "NatState",
    "is_up_to_date",
    "parse_save",
    "plan_apply",
    "plan_remove",
]

OUR_CHAINS = (INBOUND_CHAIN, OUTBOUND_CHAIN)

Command = tuple[str, ...]
Spec = tuple[str, ...]


@dataclass(frozen=True)
class NatState:
    """The chains of the nat table and its rules, each as ``(chain, spec tokens)`` in order."""

    chains: frozenset[str]
    rules: tuple[tuple[str, Spec], ...]

    def specs_in(self, chain: str) -> list[Spec]:
        return [spec for name, spec in self.rules if name == chain]

    def our_jumps(self) -> list[tuple[str, Spec]]:
        """Rules outside our chains that jump to them or carry our comment."""
        return [
            (chain, spec)
            for chain, spec in self.rules
            if chain not in OUR_CHAINS and _is_ours(spec)
        ]

    def has_ours(self) -> bool:
        return any(chain in self.chains for chain in OUR_CHAINS) or bool(self.our_jumps())


def parse_save(text: str) -> NatState:
    """Parse ``iptables-save -t nat`` output (other tables, if present, are ignored)."""
    chains: set[str] = set()
    rules: list[tuple[str, Spec]] = []
    in_nat = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif not in_nat or line == "COMMIT":
            continue
        elif line.startswith(":"):
            chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            try:
                tokens = shlex.split(line)
            except ValueError as exc:
                raise ValueError(f"iptables-save line {number} is not readable: {exc}") from None
            if len(tokens) < 2:
                raise ValueError(f"iptables-save line {number} has no chain: {line!r}")
            rules.append((tokens[1], tuple(tokens[2:])))
        else:
            raise ValueError(f"iptables-save line {number} is not understood: {line!r}")
    return NatState(chains=frozenset(chains), rules=tuple(rules))


def is_up_to_date(state: NatState, ruleset: RuleSet) -> bool:
    """True when the kernel already holds exactly ``ruleset`` (and nothing else of ours)."""
    for chain in ruleset.chains:
        if chain not in state.chains:
            return False
        if state.specs_in(chain) != [rule.spec for rule in ruleset.in_chain(chain)]:
            return False
    wanted_jumps = [
        (rule.chain, rule.spec) for rule in ruleset.rules if rule.chain not in OUR_CHAINS
    ]
    return sorted(state.our_jumps()) == sorted(wanted_jumps)


def plan_apply(state: NatState, ruleset: RuleSet) -> list[Command]:
    """The commands that turn ``state`` into ``ruleset``; empty when nothing needs to change."""
    if is_up_to_date(state, ruleset):
        return []
    commands: list[Command] = [("-D", chain, *spec) for chain, spec in state.our_jumps()]
    for chain in ruleset.chains:
        commands.append(("-F", chain) if chain in state.chains else ("-N", chain))
    commands += [("-A", rule.chain, *rule.spec) for rule in ruleset.rules]
    return commands


def plan_remove(state: NatState) -> list[Command]:
    """The commands that remove every jump, rule and chain of ours; empty when none exist."""
    commands: list[Command] = [("-D", chain, *spec) for chain, spec in state.our_jumps()]
    for chain in OUR_CHAINS:
        if chain in state.chains:
            commands += [("-F", chain), ("-X", chain)]
    return commands


def _is_ours(spec: Spec) -> bool:
    for flag, value in itertools.pairwise(spec):
        if flag in {"-j", "--jump", "-g", "--goto"} and value in OUR_CHAINS:
            return True
        if flag == "--comment" and value.startswith(COMMENT_PREFIX):
            return True
    return False
