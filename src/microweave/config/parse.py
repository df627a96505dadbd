"""Reading a source's items into Python values, safely.

Every document is bounded before and after parsing: at most MAX_DOCUMENT bytes, and at most
MAX_NODES values nested at most MAX_DEPTH deep once parsed. YAML anchors make the second bound
necessary: a few hundred bytes of aliases can stand for billions of values ("billion laughs"),
and PyYAML builds them as shared references that any walk of the tree would expand.
"""

from __future__ import annotations

import tomllib
from typing import Any, Final

import msgspec

from . import Item

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT", "MAX_NODES", "ParseError", "check_key", "format_of", "parse"]

MAX_DOCUMENT: Final = 4 << 20
MAX_NODES: Final = 200_000
MAX_DEPTH: Final = 64
_FORMATS: Final = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}


class ParseError(ValueError):
    """Why an item could not be read; the text never quotes the value (it may be a secret)."""


def format_of(name: str) -> str | None:
    """The document format a file or key name implies by its extension, if any."""
    for suffix, fmt in _FORMATS.items():
        if name.lower().endswith(suffix):
            return fmt
    return None


def check_key(key: str) -> int:
    """How many levels a source's dotted key has ("" is the root: 0). A key with an empty
    level ("a..b", ".") would name the root or a key with no name; one deeper than MAX_DEPTH
    would build a tree no merge can walk: both are refused."""
    if not key:
        return 0
    parts = key.split(".")
    if not all(parts):
        raise ParseError("the key has an empty level")
    if len(parts) > MAX_DEPTH:
        raise ParseError(f"the key is nested more than {MAX_DEPTH} levels deep")
    return len(parts)


def parse(item: Item, *, root: bool, depth: int = 0) -> Any:
    """The value of `item`; a document at a source's root must be a mapping. `depth` is how
    deep the item's key already sits (`a.b.c`: 3): the key's levels count towards MAX_DEPTH,
    or a key of thousands of levels would build a tree no merge can walk."""
    fmt, data = item.format, item.data
    if fmt == "value":
        value = data
    else:
        if isinstance(data, str):
            data = data.encode()
        if len(data) > MAX_DOCUMENT:
            raise ParseError(f"{len(data)} bytes, more than a config document may be ({MAX_DOCUMENT})")
        value = _decode(fmt, data)
    if depth > MAX_DEPTH:
        raise ParseError(f"the key is nested more than {MAX_DEPTH} levels deep")
    _check_shape(value, depth)
    if root and fmt != "value" and fmt != "text" and not isinstance(value, dict):
        raise ParseError(f"the document is a {type(value).__name__}, not a mapping of keys")
    return value


def _decode(fmt: str, data: bytes) -> Any:
    try:
        if fmt == "json":
            return msgspec.json.decode(data)
        if fmt == "text":
            # a JSON object, array or quoted string is decoded; anything else stays the text
            # it is ("5432", "1.10", "true"): a typed read converts it, like an env value
            if data.lstrip()[:1] in (b"{", b"[", b'"'):
                return msgspec.json.decode(data)
            return data.decode()
        if fmt == "toml":
            return tomllib.loads(data.decode())
        if fmt == "yaml":
            import yaml

            # the pure-Python loader, never libyaml's CSafeLoader: that one is faster, but its
            # recursive composer overflows the C stack on deeply nested input (a segfault of the
            # whole process; tests/unit/test_config_parse.py has such a document)
            return yaml.safe_load(data)
    except UnicodeDecodeError:
        raise ParseError("not UTF-8 text") from None
    except msgspec.DecodeError as exc:
        raise ParseError(f"not valid JSON ({_first_line(exc)})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParseError(f"not valid TOML ({_first_line(exc)})") from None
    except RecursionError:
        raise ParseError(f"nested more than {MAX_DEPTH} levels deep") from None
    except Exception as exc:  # yaml.YAMLError, without importing yaml for the other formats
        if type(exc).__module__.startswith("yaml"):
            raise ParseError(f"not valid YAML ({_yaml_where(exc)})") from None
        raise
    raise ParseError(f"unknown format {fmt!r}")


def _check_shape(value: Any, depth: int = 0) -> None:
    """Refuse a value with more than MAX_NODES parts or deeper than MAX_DEPTH, counting a
    part each time it is reached (so shared YAML aliases count as often as they expand)."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        current, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ParseError(f"more than {MAX_NODES} values (YAML aliases count each time they are used)")
        if depth > MAX_DEPTH:
            raise ParseError(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(current, dict):
            for key, child in current.items():
                if not isinstance(key, str):
                    raise ParseError(f"a key is a {type(key).__name__}, not text")
                if not key:  # "" would stand for the root in the flattened tree
                    raise ParseError("a key is empty")
                stack.append((child, depth + 1))
        elif isinstance(current, list):
            stack.extend((child, depth + 1) for child in current)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _yaml_where(exc: BaseException) -> str:
    # PyYAML's message quotes the offending line; keep only the problem and its position
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)
