"""Running the `microweave` CLI in subprocesses, against a registry given by environment.

Commands run as `python -m microweave.cli` (the console script need not be on PATH); each gets
the environment passed in, so a test's registry is private without touching os.environ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from helpers import LoggedProcess

__all__ = ["REPO", "CliProcess", "assert_clean", "cli", "registry_env", "wait_for_service"]

REPO = Path(__file__).resolve().parents[2]
_CLI = [sys.executable, "-m", "microweave.cli"]


def registry_env(root: Path) -> dict[str, str]:
    """The environment of a process that should use the local registry at `root`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_")}
    env.update(MICRO_REGISTRY="local", MICRO_REGISTRY_ADDRESS=str(root), PYTHONUNBUFFERED="1")
    env["COLUMNS"] = "200"  # wide rich tables: no wrapping inside the values tests look for
    return env


def cli(*args: str, env: Mapping[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to completion from the repository root."""
    return subprocess.run(
        [*_CLI, *args], env=dict(env), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def assert_clean(text: str) -> None:
    """What a user sees on an error: no traceback, no source file of ours or theirs."""
    assert "Traceback" not in text, text
    assert ".py" not in text, text
    assert str(REPO) not in text, text


def wait_for_service(
    name: str, *, env: Mapping[str, str], process: CliProcess | None = None, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Poll `microweave services --json` until `name` has a node; its records, or a failure
    naming what the service process printed if it died first."""
    limit = time.monotonic() + timeout
    while True:
        if process is not None and not process.alive():
            raise AssertionError(f"{process.args} exited with {process.returncode}:\n{process.output()}")
        listed = cli("services", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        records = [r for r in json.loads(listed.stdout) if r["name"] == name and r["nodes"]]
        if records:
            return records
        if time.monotonic() > limit:
            extra = f"\n{process.output()}" if process is not None else ""
            raise AssertionError(f"{name} not listed by `microweave services` after {timeout}s{extra}")
        time.sleep(0.1)


class CliProcess(LoggedProcess):
    """A long-running CLI command (`microweave run ...`), its output in a log file."""

    def __init__(self, *args: str, env: Mapping[str, str], log: Path) -> None:
        self.args = args
        super().__init__([*_CLI, *args], env=env, log_path=log)

    def stop(self, timeout: float = 30.0) -> int:
        return super().stop(timeout)

    def __enter__(self) -> CliProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
