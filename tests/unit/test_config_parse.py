"""Parsing config documents an attacker wrote: every hostile one is a clear ParseError that
does not quote the value (it may be a secret), and returns (bounded work, not a hang or a crash).
"""

from __future__ import annotations

import pytest

from microweave.config import Item
from microweave.config.parse import MAX_DEPTH, MAX_DOCUMENT, MAX_NODES, ParseError, check_key, parse

SECRET = "hunter2-not-in-errors"


def rejected(item: Item, match: str, *, root: bool = True, depth: int = 0) -> str:
    with pytest.raises(ParseError, match=match) as info:
        parse(item, root=root, depth=depth)
    text = str(info.value)
    assert SECRET not in text
    assert len(text) < 500
    return text


def laughs(levels: int) -> str:
    """The YAML "billion laughs": each level is ten aliases of the one before."""
    lines = [f"l0: &l0 [{SECRET}, {SECRET}, {SECRET}, {SECRET}, {SECRET}]"]
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused() -> None:
    text = rejected(Item(laughs(9), "yaml"), "YAML aliases")
    assert str(MAX_NODES) in text


def test_a_few_aliases_are_fine() -> None:
    value = parse(Item(laughs(3), "yaml"), root=True)
    assert len(value["l2"]) == 10 and value["l2"][0][0][0] == SECRET


@pytest.mark.parametrize(
    ("fmt", "doc"),
    [
        ("yaml", "a: " + "[" * 50_000 + "]" * 50_000),
        ("yaml", "a: " + "{b: " * 50_000 + "1" + "}" * 50_000),
        ("yaml", "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v: 1\n"),
        ("json", '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"),
        ("json", '{"a": ' + '{"b": ' * 70 + "1" + "}" * 70 + "}"),
        ("toml", "a = " + "[" * 50_000 + "]" * 50_000),
        ("toml", "a = " + "{b = " * 5_000 + "1" + "}" * 5_000),
        ("text", "[" * 50_000 + "]" * 50_000),
    ],
    ids=[
        "yaml-flow",
        "yaml-flow-map",
        "yaml-block",
        "json-array",
        "json-object",
        "toml-array",
        "toml-table",
        "text",
    ],
)
def test_deep_nesting_is_refused(fmt: str, doc: str) -> None:
    rejected(Item(doc, fmt), "nested more than", root=fmt != "text")


def test_nesting_within_the_bound_is_fine() -> None:
    doc = '{"a": ' + '{"b": ' * (MAX_DEPTH - 2) + "1" + "}" * (MAX_DEPTH - 2) + "}"
    assert isinstance(parse(Item(doc, "json"), root=True), dict)


def test_a_keys_levels_count_towards_the_bound() -> None:
    doc = '{"a": ' + '{"b": ' * 30 + "1" + "}" * 30 + "}"
    assert parse(Item(doc, "json"), root=False, depth=10)
    rejected(Item(doc, "json"), "nested more than", root=False, depth=40)
    rejected(Item("1", "text"), "key is nested", root=False, depth=MAX_DEPTH + 1)


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml", "text"])
def test_a_huge_document_is_refused_before_parsing(fmt: str) -> None:
    body = SECRET.encode() * (MAX_DOCUMENT // len(SECRET) + 1)
    text = rejected(Item(b"a: " + body, fmt), "more than a config document may be")
    assert str(MAX_DOCUMENT) in text


def test_many_small_values_are_refused() -> None:
    doc = "a: [" + ", ".join(["1"] * (MAX_NODES + 10)) + "]\n"
    rejected(Item(doc, "yaml"), "more than")


@pytest.mark.parametrize(
    ("doc", "kind"),
    [("1: a\n", "int"), ("on: push\n", "bool"), ("~: x\n", "NoneType"), ("1.5: x\n", "float")],
)
def test_yaml_keys_that_are_not_text_are_refused(doc: str, kind: str) -> None:
    rejected(Item(doc, "yaml"), f"a key is a {kind}")


def test_non_str_keys_of_a_value_are_refused() -> None:
    rejected(Item({"db": {5432: SECRET}}, "value"), "a key is a int")


@pytest.mark.parametrize(
    ("fmt", "doc"),
    [
        ("yaml", b"a: \xff\xfe" + SECRET.encode()),
        ("toml", b"a = '\xff" + SECRET.encode() + b"'"),
        ("json", b'{"a": "\xff' + SECRET.encode() + b'"}'),
        ("text", b"\xff" + SECRET.encode()),
    ],
)
def test_invalid_utf8_is_refused(fmt: str, doc: bytes) -> None:
    rejected(Item(doc, fmt), "UTF-8|not valid", root=fmt != "text")


@pytest.mark.parametrize(
    ("fmt", "doc", "match"),
    [
        ("toml", f"a = {SECRET}\n", "not valid TOML .*line 1"),
        ("toml", f"a = '{SECRET}\n", "not valid TOML"),
        ("toml", f"a = 1\na = '{SECRET}'\n", "not valid TOML"),
        ("json", f'{{"a": {SECRET}}}', "not valid JSON"),
        ("json", f'{{"a": "{SECRET}"', "not valid JSON"),
        ("yaml", f"a: [{SECRET}\n", "not valid YAML .*line 2"),
        ("yaml", f"a: b: {SECRET}\n", "not valid YAML"),
        ("yaml", f"a: !!python/object/apply:os.system ['{SECRET}']\n", "not valid YAML"),
        ("text", "{" + SECRET, "not valid JSON"),
    ],
)
def test_syntax_errors_say_where_without_the_value(fmt: str, doc: str, match: str) -> None:
    rejected(Item(doc, fmt), match, root=fmt != "text")


@pytest.mark.parametrize(("fmt", "doc"), [("yaml", "- a\n- b\n"), ("json", "[1]"), ("yaml", "just text")])
def test_a_root_document_must_be_a_mapping(fmt: str, doc: str) -> None:
    rejected(Item(doc, fmt), "not a mapping")
    assert parse(Item(doc, fmt), root=False) is not None  # under a key of its own it is fine


def test_an_unknown_format_is_refused() -> None:
    rejected(Item("a = 1", "ini"), "unknown format")


def test_text_leaves_stay_text_unless_json() -> None:
    assert parse(Item("5432", "text"), root=False) == "5432"
    assert parse(Item(b"1.10", "text"), root=False) == "1.10"
    assert parse(Item('"quoted"', "text"), root=False) == "quoted"
    assert parse(Item(' {"a": [1]}', "text"), root=False) == {"a": [1]}
    assert parse(Item("", "text"), root=False) == ""
    assert parse(Item("{}", "yaml"), root=True) == {}
    assert parse(Item("", "yaml"), root=False) is None


def test_an_empty_key_is_refused() -> None:
    rejected(Item('"": {x: 1}\ndb: {port: 1}\n', "yaml"), "a key is empty")
    rejected(Item('{"db": {"": 1}}', "json"), "a key is empty")


@pytest.mark.parametrize("key", [".", "a..b", "a.", ".a"])
def test_a_source_key_with_an_empty_level_is_refused(key: str) -> None:
    with pytest.raises(ParseError, match="empty level"):
        check_key(key)


def test_a_source_keys_depth() -> None:
    assert check_key("") == 0
    assert check_key("db.port") == 2
    with pytest.raises(ParseError, match="nested more than"):
        check_key(".".join(["k"] * (MAX_DEPTH + 1)))
