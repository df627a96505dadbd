"""A bound view is swapped only by an update that changes what it binds.

`Config.bind` promises a new instance "on every update that changes it"; code that keeps the
instance it read (or compares it by identity, as the must-show "the bound view keeps its last
good instance" does) must not see it replaced by an equal copy because an unrelated key
changed or because an update of its own keys was rejected.
"""

from __future__ import annotations

import logging

import pytest
from config_kit import App, settle

from microweave.config import Config
from microweave.config.sources.memory import MemorySource


async def test_an_unrelated_change_or_a_rejected_item_keeps_the_bound_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = MemorySource()
    source.put("app.n", "1", "text")
    async with Config([source]) as config:
        app = config.bind(App, "app")
        first = app.value
        await source.set("other", "x")  # another subtree
        await settle()
        assert config.get("other") == "x"
        assert app.value is first
        with caplog.at_level(logging.ERROR, logger="microweave.config"):
            source.put("app", b'{"n": 5', "text")  # does not parse: rejected, the rest applied
            await source.set("other", "y")
            await settle()
        assert config.get("other") == "y" and "rejected app" in caplog.text
        assert app.value is first
        await source.set("app.n", "2")  # a change of its own: a new instance
        await settle()
        assert app.value == App(n=2) and app.value is not first
