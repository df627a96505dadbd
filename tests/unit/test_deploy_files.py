"""The repository's Dockerfile, .dockerignore, deploy/k8s and deploy/helm/greeter are the
greeter's rendering of the templates `microweave new` uses: never edited by hand, never stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_rendered_deploy_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/deploy-files"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{result.stderr}\nrun scripts/deploy-files after editing the templates"
