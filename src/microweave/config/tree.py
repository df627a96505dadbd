"""Settings trees: build one from dotted items, merge layers, index and compare them.

A tree is nested dicts with str keys; anything else (lists included) is a leaf. Merging is
deep: mappings merge key by key, any other value replaces what the layer below had.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Unset", "build", "flatten", "interpolate", "leaves", "merge", "split"]


class Unset(LookupError):
    """An interpolated variable that is not set and has no default."""

    def __init__(self, key: str, name: str) -> None:
        super().__init__(f"{key}: ${{{name}}} is not set and has no default (write ${{{name}:default}})")
        self.key = key
        self.name = name


# ${NAME}, ${NAME:default}, and the shell's ${NAME:-default} meaning the same
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-?([^}]*))?\}")


def split(key: str) -> list[str]:
    return key.split(".") if key else []


def build(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """One tree from (dotted key, value) pairs; shallower keys first, so `db.port` set on its
    own overrides the `port` inside a document stored at `db`. The values are never changed:
    a mapping is copied before a deeper key is written into it (else the override would be
    written into the source's document and outlive the key's deletion)."""
    tree: dict[str, Any] = {}
    mine: set[int] = {id(tree)}  # the mappings built here, free to write into
    for key, value in sorted(items, key=lambda kv: (kv[0].count(".") + bool(kv[0]), kv[0])):
        parts = split(key)
        if not parts:
            tree = merge(tree, value) if isinstance(value, dict) else tree
            mine.add(id(tree))
            continue
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict) or id(child) not in mine:
                child = node[part] = dict(child) if isinstance(child, dict) else {}
                mine.add(id(child))
            node = child
        last = parts[-1]
        node[last] = merge(node[last], value) if isinstance(node.get(last), dict) else value
    return tree


def merge(base: Mapping[str, Any], over: Any) -> dict[str, Any]:
    """A new tree: `over` laid on `base` (neither is changed)."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        out[key] = merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return out


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Every dotted key of the tree (mappings too) -> its value: `get` is one dict lookup."""
    flat: dict[str, Any] = {"": tree}
    stack: list[tuple[str, Mapping[str, Any]]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            flat[path] = value
            if isinstance(value, dict):
                stack.append((path, value))
    return flat


def leaves(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a flattened tree that are not non-empty mappings: what changes report."""
    return {k: v for k, v in flat.items() if k and not (isinstance(v, dict) and v)}


def interpolate(tree: Mapping[str, Any], lookup: Callable[[str], str | None]) -> dict[str, Any]:
    """`${NAME}` and `${NAME:default}` in every string replaced from `lookup` (the process
    environment); `$${` is a literal `${`. A name that is unset and has no default raises
    `Unset`. Values are replaced once: a variable's value is not interpolated again."""

    def text(key: str, value: str) -> str:
        if "${" not in value:
            return value

        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            found = lookup(match.group(1))
            if found is not None:
                return found
            if match.group(2) is not None:
                return match.group(2)
            raise Unset(key, match.group(1))

        return _VAR.sub(one, value)

    def walk(key: str, value: Any) -> Any:
        if isinstance(value, str):
            return text(key, value)
        if isinstance(value, dict):
            return {k: walk(f"{key}.{k}" if key else k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(f"{key}[{i}]", v) for i, v in enumerate(value)]
        return value

    return walk("", tree)  # type: ignore[no-any-return]
