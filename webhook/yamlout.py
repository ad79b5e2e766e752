"""YAML for people: block style, key order kept, and no ``&id001`` anchors.

The injector shares objects (the original pod's subtrees, the cached proxy containers), and
PyYAML would print every repeated object as an anchor and an alias; valid YAML, but unreadable
and surprising in ``kubectl`` diffs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

__all__ = ["dump", "dump_all"]


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_NoAliasDumper, sort_keys=False, width=100)


def dump_all(documents: Iterable[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_NoAliasDumper, sort_keys=False, width=100)
