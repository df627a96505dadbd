"""What the CLI says about registry URLs: the schemes it takes, and a hint that fits the error.

Both come from the scheme table in `_backends` (built-in backends and the entry points of
installed plugins), so a backend added there shows up in `--help` and in hints without a change
here. A mistake in an etcd URL points at etcd's page, not at an example for another backend.
"""

from __future__ import annotations

import re

from .._backends import REGISTRIES, _table

__all__ = ["configuration_hint", "registry_help", "registry_hint", "registry_schemes"]

#: built-in backends that keep files or memory on this host: no server, no docs page of their own
_HOST_ONLY = "e.g. --registry local://, --registry local:///some/dir or --registry memory://"


def registry_schemes() -> list[str]:
    """Every registry scheme this installation knows: built-in first (table order), then plugins."""
    table = _table("microweave.registries", REGISTRIES)
    return [*REGISTRIES, *sorted(s for s in table if s not in REGISTRIES)]


def registry_help(prefix: str) -> str:
    schemes = ", ".join(f"{s}://" for s in registry_schemes())
    return (
        f"{prefix} one of {schemes} (local:// is the default: files on this host; "
        "options of each: docs/registry/<scheme>.md). "
        "Default: $MICRO_REGISTRY (+ $MICRO_REGISTRY_ADDRESS), else local://."
    )


def _docs(scheme: str) -> str | None:
    """The docs page of a built-in backend that talks to a server (those with a pip extra)."""
    entry = REGISTRIES.get(scheme)
    return f"docs/registry/{scheme}.md" if entry is not None and entry[2] is not None else None


def registry_hint(url: str | None) -> str:
    """What to do about a registry URL that could not be used."""
    known = ", ".join(f"{s}://" for s in registry_schemes())
    if not url or "://" not in url:
        return f"write the registry as scheme://address; schemes: {known}"
    scheme = url.split("://", 1)[0].lower()
    page = _docs(scheme)
    if page is not None:
        return f"see {page} for {scheme}:// addresses and URL options"
    if scheme in REGISTRIES:
        return _HOST_ONLY
    if scheme in registry_schemes():
        return f"see the documentation of the package that provides {scheme}://"
    served = ", ".join(f"{s}://" for s in REGISTRIES if _docs(s))
    return f"check the scheme's spelling; {served} each have a page docs/registry/<scheme>.md"


def configuration_hint(detail: str) -> str:
    """The hint for a configuration error raised after the registry was built: a registry's
    errors name its URL (`etcd://...`), so its page is the place to look; one naming an
    environment variable is that variable's; anything else is an option of the command."""
    for scheme in registry_schemes():
        if re.search(rf"\b{re.escape(scheme)}://", detail):
            return registry_hint(f"{scheme}://")
    if re.search(r"\b(MICRO|OTEL)_[A-Z_]+", detail):  # MICRO_LOG_LEVEL='loud' is no option's fault
        return "fix or unset the environment variable it names"
    return "check the command's options: microweave COMMAND --help"
