"""The `microweave` command: run services, look them up, call them, and a demo of it all."""

from __future__ import annotations

from .app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point (`microweave = "microweave.cli:main"`)."""
    app(prog_name="microweave")
