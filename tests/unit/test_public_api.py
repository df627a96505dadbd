"""`microweave.__all__`: sorted, no duplicates, every name real, everything a user needs."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

import pytest

import microweave
from microweave import errors

# What a user writes against, from the top-level package alone.
NEEDED = {
    "Service",
    "Context",
    "current_context",
    "Client",
    "BlockingClient",
    "Retry",
    "Registry",
    "Selector",
    "by_version",
    "by_metadata",
    "Config",
    "Secret",
}


def test_all_is_sorted_without_duplicates() -> None:
    names = microweave.__all__
    # ruff's order (RUF022): CONSTANTS, then Classes, then functions, each sorted
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", microweave.__all__)
def test_every_name_resolves(name: str) -> None:
    assert getattr(microweave, name) is not None


def test_what_users_need_is_exported() -> None:
    assert set(microweave.__all__) >= NEEDED


def test_every_error_class_is_exported() -> None:
    classes = {
        name
        for name in errors.__all__
        if inspect.isclass(getattr(errors, name)) and issubclass(getattr(errors, name), errors.MicroError)
    }
    assert classes and classes <= set(microweave.__all__)
    for name in classes:
        assert getattr(microweave, name) is getattr(errors, name)


def test_nothing_public_is_left_out() -> None:
    # every public class or function bound at the top of the package is listed in __all__
    public = {
        name
        for name, value in vars(microweave).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public <= set(microweave.__all__)


def _isort_key(name: str) -> tuple[int, str]:
    if name.isupper() and len(name) > 1:
        return 0, name
    return (1 if name[:1].isupper() else 2), name


@pytest.mark.parametrize(
    "module",
    [
        "microweave.errors",
        "microweave.context",
        "microweave.client",
        "microweave.client.blocking",
        "microweave.registry",
        "microweave.selector",
        "microweave.service",
        "microweave.codec",
        "microweave.server",
        "microweave.transport",
        "microweave._backends",
    ],
)
def test_submodule_all_is_sorted_and_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    # plain sorted, or ruff's isort-style sort (CONSTANTS, then Classes, then functions)
    assert names in (sorted(names), sorted(names, key=_isort_key)), module
    assert len(names) == len(set(names)), module
    for name in names:
        assert hasattr(mod, name), f"{module}.{name}"


def test_version_matches_the_distribution() -> None:
    assert microweave.__version__ == importlib.metadata.version("microweave")
