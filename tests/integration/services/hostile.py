"""A service for the hostile-peer tests of the tcp port, run as `python hostile.py [options]`.

It counts how often its handler starts (so a test can tell one execution from many), returns
replies of any size (so a peer that never reads has something to pile up), takes client
streams at whatever pace a test asks for (so request bytes pile up in front of a slow
handler), and can be started
under a small descriptor limit (`--nofile`, what `ulimit -n` does) with tcp limits taken from
the environment (`HOSTILE_LIMITS`, JSON: names of `microweave.transport.limits` constants).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
from collections.abc import AsyncIterator

import msgspec

from microweave import Service

parser = argparse.ArgumentParser()
parser.add_argument("--ttl", type=float, default=15.0)
parser.add_argument("--nofile", type=int, default=0, help="soft RLIMIT_NOFILE, like `ulimit -n`")
options = parser.parse_args()

if options.nofile:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (options.nofile, hard))
if os.environ.get("HOSTILE_LIMITS"):
    from microweave.transport import limits

    for name, value in json.loads(os.environ["HOSTILE_LIMITS"]).items():
        if not hasattr(limits, name):
            raise SystemExit(f"no limit named {name}")
        setattr(limits, name, value)


class Hold(msgspec.Struct):
    seconds: float = 0.0


class Size(msgspec.Struct):
    size: int = 0


class Note(msgspec.Struct):
    text: str = ""


class Total(msgspec.Struct):
    count: int


class Item(msgspec.Struct):
    data: str = ""
    pause: float = 0.0  # seconds the handler waits after taking this item


class Collected(msgspec.Struct):
    items: int
    chars: int


service = Service("hostile", ttl=options.ttl)
started = 0


@service.handler
class Hostile:
    async def count(self, req: Hold) -> Total:
        """Counts every start of this handler, then holds the call for `seconds`."""
        global started
        started += 1
        await asyncio.sleep(req.seconds)
        return Total(started)

    async def total(self, req: Hold) -> Total:
        return Total(started)

    async def echo(self, req: Note) -> Note:
        return req

    async def big(self, req: Size) -> Note:
        return Note("y" * req.size)

    async def collect(self, reqs: AsyncIterator[Item]) -> Collected:
        """Takes each item, then waits as long as it says: a consumer as slow as a test wants.
        It keeps nothing of an item once counted, so a test measures what the node holds, not
        what this handler chooses to."""
        items = chars = 0
        async for item in reqs:
            items += 1
            chars += len(item.data)
            pause = item.pause
            del item
            await asyncio.sleep(pause)
        return Collected(items, chars)


if __name__ == "__main__":
    service.run()
