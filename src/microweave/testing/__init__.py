"""Test helpers for services built on microweave (the pytest plugin lives in `plugin`)."""
