"""pytest plugin (entry point `pytest11`): fixtures for testing microweave services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["microweave_registry_dir"]


@pytest.fixture
def microweave_registry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private `local://` registry for one test: services and clients in it see only each other."""
    root = tmp_path / "registry"
    monkeypatch.setenv("MICRO_REGISTRY", "local")
    monkeypatch.setenv("MICRO_REGISTRY_ADDRESS", str(root))
    yield root
