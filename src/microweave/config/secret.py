"""Secret: a setting whose value is never shown.

`repr()`, `str()`, f-strings, logging, `config dump`, change events and registry metadata all
see `**********`; only `reveal()` returns the value. It is deliberately not a `str` subclass:
code that would write a str (json.dumps, msgspec, a header) fails loudly instead of leaking.
Use it as a field type in a bound model (msgspec Struct, dataclass or pydantic model), or ask
for it: `config.get("db.password", Secret)`.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["MASK", "Secret", "looks_secret", "mask_credentials"]

MASK: Final = "**********"

# key names whose values `config dump` masks even when no model declared them Secret
_SECRET_NAMES = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|credentials?|auth"
    r"|(api|private|secret|secret[_-]?access|access|signing|encryption|master)[_-]?key)$",
    re.IGNORECASE,
)


# scheme://user:PASSWORD@host: the password part of a URL's userinfo
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)([^\s@/]+)(@)")


def mask_credentials(text: str) -> str:
    """`postgres://app:hunter2@db/x` shown as `postgres://app:**********@db/x`: a URL's
    password is masked wherever a value is shown, whatever its key is called."""
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", text) if "@" in text else text


def looks_secret(key: str) -> bool:
    """Whether a dotted key's last part names a secret (password, token, api_key, ...)."""
    return bool(_SECRET_NAMES.search(key.rpartition(".")[2]))


class Secret:
    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value._value
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds text, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The value itself: pass it straight to what needs it, never to a log."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __copy__(self) -> Secret:
        return self  # immutable: a copy is itself (copy.deepcopy, dataclasses.asdict, model_copy)

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled: it would leave the process in the clear")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """pydantic v2: accept a str (or a Secret); serialize masked."""
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: MASK),
        )

    @classmethod
    def _validate(cls, value: Any) -> Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return cls(value)
        raise ValueError("a secret must be text (quote it in YAML)")
