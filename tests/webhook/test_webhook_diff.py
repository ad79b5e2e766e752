"""webhook.diff against jsonpatch as the oracle: applying the diff of (a, b) to a yields b."""

from __future__ import annotations

from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.diff import diff, escape

keys = st.sampled_from(["a", "b", "a/b", "~", "~1", "x~0/", ""]) | st.text(max_size=4)
scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2) | st.text(max_size=3)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(json_values, json_values)
def test_diff_of_unrelated_documents_applies(a: Any, b: Any) -> None:
    assert jsonpatch.apply_patch(a, diff(a, b)) == b


@settings(max_examples=150, deadline=None)
@given(st.lists(json_values, max_size=6), st.data())
def test_list_insertions_and_removals(items: list[Any], data: st.DataObject) -> None:
    edited = list(items)
    for _ in range(data.draw(st.integers(0, 3))):
        if edited and data.draw(st.booleans()):
            del edited[data.draw(st.integers(0, len(edited) - 1))]
        else:
            edited.insert(data.draw(st.integers(0, len(edited))), data.draw(json_values))
    document = {"spec": {"initContainers": items}}
    target = {"spec": {"initContainers": edited}}
    assert jsonpatch.apply_patch(document, diff(document, target)) == target


def test_booleans_are_not_integers() -> None:
    assert diff({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]
    assert diff([1.0], [1]) == [{"op": "replace", "path": "/0", "value": 1}]
    assert diff({"a": [0, {"b": False}]}, {"a": [0, {"b": 0}]}) == [
        {"op": "replace", "path": "/a/1/b", "value": 0}
    ]


def test_shared_subtrees_are_skipped_and_keys_escaped() -> None:
    shared = {"big": list(range(100))}
    a = {"spec": shared, "metadata": {"annotations": {"k": "v"}}}
    b = {"spec": shared, "metadata": {"annotations": {"k": "v", "a/b~c": "1"}}}
    assert diff(a, b) == [{"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "1"}]
    assert escape("~/") == "~0~1"


def test_prepending_to_a_list_adds_at_the_front() -> None:
    a = {"l": [{"name": "app"}]}
    b = {"l": [{"name": "x"}, {"name": "y"}, {"name": "app"}]}
    assert diff(a, b) == [
        {"op": "add", "path": "/l/0", "value": {"name": "x"}},
        {"op": "add", "path": "/l/1", "value": {"name": "y"}},
    ]
