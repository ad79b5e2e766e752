"""A fast RFC 6902 diff for the injector's case: mostly-shared trees with a few insertions.

``jsonpatch.make_patch`` deep-copies and sorts every member of both documents to detect moves;
on a three-container pod that took ~1.3 ms of the ~1.5 ms an admission cost (profiled with
cProfile, see docs/performance.md). The injected pod shares every untouched subtree with the
original (same objects), so comparing by identity first and emitting only ``add``/``remove``/
``replace`` finds the same changes in microseconds. The tests check, for every golden case and
for random JSON document pairs (hypothesis), that ``jsonpatch.apply_patch(a, diff(a, b)) == b``,
with jsonpatch itself as the oracle.

Operations hold references into ``b``, not copies: serialize them, do not mutate them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["diff", "escape"]


def escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901): ``~`` -> ``~0``, ``/`` -> ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")


def _same(a: Any, b: Any) -> bool:
    """Deep JSON equality. Unlike ``==``, ``True`` is not ``1`` and ``1.0`` is not ``1``."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(value, b[key]) for key, value in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _diff(a: Any, b: Any, path: str, out: list[dict[str, Any]]) -> None:
    if _same(a, b):
        return
    if type(a) is dict and type(b) is dict:
        for key, value in b.items():
            where = f"{path}/{escape(key)}"
            if key not in a:
                out.append({"op": "add", "path": where, "value": value})
            else:
                _diff(a[key], value, where, out)
        for key in a:
            if key not in b:
                out.append({"op": "remove", "path": f"{path}/{escape(key)}"})
        return
    if type(a) is list and type(b) is list:
        _diff_lists(a, b, path, out)
        return
    out.append({"op": "replace", "path": path, "value": b})


def _diff_lists(a: list[Any], b: list[Any], path: str, out: list[dict[str, Any]]) -> None:
    limit = min(len(a), len(b))
    prefix = 0
    while prefix < limit and _same(a[prefix], b[prefix]):
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and _same(a[-1 - suffix], b[-1 - suffix]):
        suffix += 1
    old = a[prefix : len(a) - suffix]
    new = b[prefix : len(b) - suffix]
    common = min(len(old), len(new))
    for index in range(common):  # changed in place: recurse (a container gaining an env var)
        _diff(old[index], new[index], f"{path}/{prefix + index}", out)
    for _ in range(len(old) - common):  # removed: each removal shifts the rest down
        out.append({"op": "remove", "path": f"{path}/{prefix + common}"})
    for index in range(common, len(new)):
        out.append({"op": "add", "path": f"{path}/{prefix + index}", "value": new[index]})


def diff(a: Any, b: Any) -> list[dict[str, Any]]:
    """RFC 6902 operations that turn JSON document ``a`` into ``b``."""
    out: list[dict[str, Any]] = []
    _diff(a, b, "", out)
    return out
