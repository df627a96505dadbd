"""scripts/demo and scripts/test stop early with a message that says what to do next.

The paths that reach pip (a download) are proven by running the scripts on a stock Debian
Python; these cover the failures before it, with interpreters made to look broken, and a venv
directory in the test's tmp_path (MICROWEAVE_VENV) so the checkout is never touched.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import REPO

SCRIPTS = ["scripts/demo", "scripts/test"]


def _run(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    environ.update(MICROWEAVE_VENV=str(tmp_path / "venv"), NO_COLOR="1", **env)
    return subprocess.run(
        [str(REPO / script)], env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def _executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_python_that_does_not_exist(script: str, tmp_path: Path) -> None:
    ran = _run(script, tmp_path, PYTHON="no-such-python3.11")
    assert ran.returncode == 2
    assert "error: PYTHON=no-such-python3.11: no such command" in ran.stderr
    assert "PYTHON=/usr/bin/python3.11" in ran.stderr  # what to give instead
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_python_that_is_too_old(script: str, tmp_path: Path) -> None:
    # answers the version probe with 3.10 and fails the >= 3.11 check, as a real 3.10 would
    old = _executable(
        tmp_path / "python3.10", '#!/bin/sh\ncase "$2" in *print*) echo 3.10; exit 0;; esac\nexit 1\n'
    )
    ran = _run(script, tmp_path, PYTHON=old)
    assert ran.returncode == 2
    assert "is Python 3.10; microweave needs 3.11 or newer" in ran.stderr
    assert "apt-get install python3.11" in ran.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_python_without_venv_says_which_package_to_install(script: str, tmp_path: Path) -> None:
    # Debian ships ensurepip in python3.X-venv; without it `import ensurepip` fails like this
    fake = tmp_path / "stripped"
    fake.mkdir()
    (fake / "ensurepip.py").write_text('raise ImportError("ensurepip is disabled in Debian/Ubuntu")\n')
    ran = _run(script, tmp_path, PYTHON=sys.executable, PYTHONPATH=str(fake))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert ran.returncode == 2
    assert "cannot make a virtualenv: its venv/ensurepip modules are missing" in ran.stderr
    assert f"apt-get install python{version}-venv" in ran.stderr
    assert not (tmp_path / "venv").exists()  # no half-made venv left to trip the next run
