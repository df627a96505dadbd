"""Fixtures shared by the whole suite.

Every test gets its own `local://` registry directory (through the `microweave_registry_dir`
fixture of microweave's pytest plugin), so services started by one test, in-process or as
processes, never see those of another test or of a developer's running services.
"""

from __future__ import annotations

import os
import pkgutil
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import engines
import pytest
from helpers import ServiceProcesses

# every engine module (tests/engines/<engine>.py) is a plugin: its fixtures serve every test
pytest_plugins = [
    f"engines.{module.name}"
    for module in pkgutil.iter_modules(engines.__path__)
    if not module.name.startswith("_")
]


_RUNTIME_DIR = tempfile.mkdtemp(prefix="microweave-tests-")


def pytest_configure(config: pytest.Config) -> None:
    """A default `local://` registry of this pytest process's own (under a fresh
    XDG_RUNTIME_DIR, which the services it starts inherit): parallel workers (pytest-xdist,
    scripts/test) and a developer's running services never meet a test's nodes that use the
    default registry."""
    os.environ["XDG_RUNTIME_DIR"] = _RUNTIME_DIR


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under `--dist loadgroup` (scripts/test), tests marked `xdist_group` must really share a
    worker: podman builds racing on one storage, or three Kubernetes clusters at once, are what
    the groups prevent. pytest-xdist tags their nodeids with "@group"; under a pytest it cannot
    tag (9.2 with xdist 3.8 was one) they fail here instead of spreading silently."""
    grouped = getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group")
    if grouped and "@" not in item.nodeid:
        pytest.fail(
            f"pytest-xdist did not put this xdist_group test in its group under pytest "
            f"{pytest.__version__}: install the pytest version pyproject.toml's dev extra "
            "allows (./scripts/test does)",
            pytrace=False,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_RUNTIME_DIR, ignore_errors=True)


@pytest.fixture
def registry_dir(microweave_registry_dir: Path) -> Path:
    """A private local registry: MICRO_REGISTRY=local, MICRO_REGISTRY_ADDRESS=<tmp dir>."""
    return microweave_registry_dir


@pytest.fixture
def processes(registry_dir: Path, tmp_path: Path) -> Iterator[ServiceProcesses]:
    """Start service scripts as `python script.py`; each is stopped by PID at teardown
    (SIGTERM, then SIGKILL if it lingers)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = ServiceProcesses(registry_dir, logs)
    try:
        yield procs
    finally:
        procs.stop_all()
