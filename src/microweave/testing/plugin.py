"""pytest plugin (entry point `pytest11`): fixtures for testing microweave services.

Loaded by pytest whenever microweave is installed, so a project's tests can ask for these
fixtures by name with no conftest of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .logs import LogEntry, capture_logs

__all__ = ["microweave_logs", "microweave_registry_dir"]


@pytest.fixture
def microweave_registry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private `local://` registry for one test: services and clients in it see only each other."""
    root = tmp_path / "registry"
    monkeypatch.setenv("MICRO_REGISTRY", "local")
    monkeypatch.setenv("MICRO_REGISTRY_ADDRESS", str(root))
    yield root


@pytest.fixture
def microweave_logs() -> Iterator[list[LogEntry]]:
    """Every log record at INFO or above during the test, as dicts (see `capture_logs`).

    Why a fixture as well as the `with` block: the capture spans the whole test, so whatever
    the services log while starting and stopping is there too, with no extra indentation in
    the test. For another level or a single logger, use `capture_logs` directly.
    """
    with capture_logs() as entries:
        yield entries
