"""Typed reads: a value or a subtree converted to a type, and the secret fields of a model.

pydantic models validate themselves (lax mode: "5432" from the environment becomes 5432);
everything else (msgspec Structs, dataclasses, TypedDicts, int, list[str], ...) goes through
`msgspec.convert` with `strict=False`, which converts text the same way. Error messages name
the field and the problem, never the value: it may be a secret.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from .secret import Secret

__all__ = ["ConversionError", "converter", "secret_fields"]


class ConversionError(ValueError):
    """A value that does not fit the type asked for; the text is safe to log."""


def _dec_hook(tp: Any, value: Any) -> Any:
    if tp is Secret:
        if isinstance(value, str):
            return Secret(value)
        raise msgspec.ValidationError("a secret must be text (quote it in YAML)")
    raise NotImplementedError


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_validate") and hasattr(tp, "model_fields")


def converter(tp: Any, key: str = "") -> Callable[[Any], Any]:
    """A function that turns config data into an instance of `tp`, or raises ConversionError
    naming the config key of the field at fault (`key` is where the data sits)."""
    if _is_pydantic(tp):
        from pydantic import ValidationError

        def pydantic_convert(data: Any) -> Any:
            try:
                return tp.model_validate(data)
            except ValidationError as exc:
                problems = exc.errors(include_input=False, include_url=False, include_context=False)
                where = [".".join(p for p in (key, *map(str, e["loc"])) if p) for e in problems[:5]]
                text = "; ".join(
                    f"{w or '(root)'}: {e['msg']}" for w, e in zip(where, problems, strict=False)
                )
                raise ConversionError(text) from None

        return pydantic_convert

    def msgspec_convert(data: Any) -> Any:
        try:
            return msgspec.convert(data, tp, strict=False, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            text = _unquoted(str(exc))
            # msgspec says where as `$.port`: name the config key, `db.port`
            text = text.replace("`$.", f"`{key}." if key else "`").replace("`$`", f"`{key or '(root)'}`")
            raise ConversionError(text) from None

    return msgspec_convert


# msgspec quotes the value it refused in a few messages ("Invalid enum value 'x' - at `$.mode`",
# the same for a Literal or a tag): the value may be a secret, so it is cut out
_QUOTED_VALUE = re.compile(r"^(Invalid (?:enum )?value)\b(?:.*(?= - at `)|.*)", re.DOTALL)


def _unquoted(message: str) -> str:
    return _QUOTED_VALUE.sub(r"\1", message)


def _mentions_secret(annotation: Any) -> bool:
    if annotation is Secret:
        return True
    # pydantic's own secret types: masked by the config as well as by pydantic
    if getattr(annotation, "__module__", "").startswith("pydantic") and getattr(
        annotation, "__name__", ""
    ) in ("SecretStr", "SecretBytes"):
        return True
    return any(_mentions_secret(arg) for arg in typing.get_args(annotation))


def _fields(model: Any) -> list[tuple[str, Any]]:
    if _is_pydantic(model):
        return [(f.alias or name, f.annotation) for name, f in model.model_fields.items()]
    if isinstance(model, type) and issubclass(model, msgspec.Struct):
        return [(f.encode_name, f.type) for f in msgspec.structs.fields(model)]
    if dataclasses.is_dataclass(model) and isinstance(model, type):
        hints = typing.get_type_hints(model)
        return [(f.name, hints.get(f.name, f.type)) for f in dataclasses.fields(model)]
    return []


def secret_fields(model: Any, prefix: str = "", _depth: int = 0) -> set[str]:
    """The dotted keys (under `prefix`) of the fields of `model` typed `Secret`, nested
    models included."""
    found: set[str] = set()
    if _depth > 16:
        return found
    for name, annotation in _fields(model):
        key = f"{prefix}.{name}" if prefix else name
        if _mentions_secret(annotation):
            found.add(key)
            continue
        for arg in (annotation, *typing.get_args(annotation)):
            if isinstance(arg, type) and _fields(arg):
                found |= secret_fields(arg, key, _depth + 1)
    return found
