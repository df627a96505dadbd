"""Unknown options in a registry URL: refused, with the known option a typo was meant to be.

A backend that ignored `?tll=3` or `?interfce=eth0` would run with its defaults while its user
believes otherwise; the error says which option was meant, since that is the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["unknown_options"]


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
