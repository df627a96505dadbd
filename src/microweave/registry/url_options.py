"""Unknown options in a registry URL: refused, with the known option a typo was meant to be.

A backend that ignored `?tll=3` or `?interfce=eth0` would run with its defaults while its user
believes otherwise; the error says which option was meant, since that is the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigurationError

__all__ = ["typed_options", "unknown_options"]


def unknown_options(given: Iterable[str], known: Iterable[str]) -> str | None:
    """`tll (did you mean ttl?), colour` for the unknown ones of `given`; None when all known."""
    names = sorted(known)
    unknown = sorted(set(given) - set(names))
    if not unknown:
        return None
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(parts)


def typed_options(
    public: str, query: dict[str, str], given: dict[str, Any], types: dict[str, type]
) -> dict[str, Any]:
    """`given` (keyword arguments, which win) completed from the URL's `query`, each value
    converted to its type in `types`; an unknown option or a value that does not convert is a
    ConfigurationError naming `public` (the URL without credentials)."""
    out = dict(given)
    for key, value in query.items():
        if key not in types:
            known = ", ".join(sorted(types))
            raise ConfigurationError(f"{public}: unknown option {key!r}; known: {known}")
        if out.get(key) is not None:
            continue
        try:
            out[key] = types[key](value)
        except ValueError:
            raise ConfigurationError(f"{public}: {key}={value!r} is not a {types[key].__name__}") from None
    return out
