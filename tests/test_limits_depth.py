"""limits.deepest walks only containers and formats a path only for the answer: it must name
exactly the field the plain walk (a path string per node) names."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.limits import deepest

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text("abc", max_size=2), inner, max_size=3)),
    max_leaves=30,
)


def reference(value: Any, limit: int) -> str | None:
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            if depth > limit:
                return path or "<body>"
            stack.extend((v, depth + 1, f"{path}.{k}" if path else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            if depth > limit:
                return path or "<body>"
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node))
    return None


@settings(max_examples=500)
@given(json_values, st.integers(0, 6))
def test_deepest_names_the_same_field(value: Any, limit: int) -> None:
    assert deepest(value, limit) == reference(value, limit)


def test_deep_body_is_walked_without_recursion() -> None:
    body: Any = {"model": "m", "messages": []}
    node = body["messages"]
    for _ in range(5000):
        node.append([])
        node = node[0]
    assert deepest(body, 64) == "messages" + "[0]" * 63
