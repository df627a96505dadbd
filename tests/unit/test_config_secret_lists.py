"""A secret named inside a list of mappings (`users: [{name, token}]`, a common YAML shape) is
masked like one in a mapping: in `dump()` and in the changes watchers and hooks receive.

A tree's lists are leaves (tree.py), so a mask that walks mappings only went past them and
`dump()` printed the token (and `config dump` with it).
"""

from __future__ import annotations

import asyncio

from microweave.config import Config
from microweave.config.secret import MASK
from microweave.config.sources.memory import MemorySource

TOKEN = "tok-in-a-list-never-shown"


async def test_dump_masks_a_secret_inside_a_list() -> None:
    source = MemorySource({"users": [{"name": "ann", "token": TOKEN}], "ports": [1, 2]})
    async with Config([source]) as config:
        shown = config.dump()
        assert TOKEN not in repr(shown)
        assert shown["users"] == [{"name": "ann", "token": MASK}]
        assert shown["ports"] == [1, 2]
        assert config.dump(reveal=True)["users"][0]["token"] == TOKEN


async def test_a_change_of_a_list_masks_the_secret_inside_it() -> None:
    source = MemorySource({"users": [{"name": "ann", "token": "old-" + TOKEN}]})
    async with Config([source]) as config, config.watch("users") as changes:
        source.put("users", [{"name": "ann", "token": TOKEN}])
        change = await asyncio.wait_for(anext(changes), 5)
        assert change.key == "users"
        assert TOKEN not in repr(change) and TOKEN not in str(change.new)
        assert change.new[0]["name"] == "ann"
        assert change.new[0]["token"].reveal() == TOKEN  # a Secret, as a secret key's value is
