"""What crashed subscribers leave in a stream's groups, removed by the next subscriber."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from . import BROADCAST_GROUP
from ._entries import text

if TYPE_CHECKING:
    from . import Client

__all__ = ["STALE_MS", "sweep"]

log = logging.getLogger("microweave.broker.redis")

#: a consumer (queue groups) or a broadcast group idle this long, holding nothing, is removed
#: when a subscriber of the same stream starts
STALE_MS: Final = 3_600_000
#: groups of one stream looked at when sweeping
SWEEP_LIMIT: Final = 100


async def sweep(client: Client, key: str, own_group: str) -> None:
    """Remove what crashed subscribers of this stream left: broadcast groups whose consumers
    have all been idle for an hour, and this queue group's idle members holding nothing."""
    groups = await client.xinfo_groups(key)
    for group in groups[:SWEEP_LIMIT]:
        name = text(group["name"])
        if name != own_group and not name.startswith(BROADCAST_GROUP):
            continue  # another queue group: its own members sweep it
        consumers = await client.xinfo_consumers(key, name)
        if name == own_group:
            for consumer in consumers:
                if consumer["pending"] == 0 and consumer["idle"] > STALE_MS:
                    await client.xgroup_delconsumer(key, name, consumer["name"])
        elif consumers and all(c["idle"] > STALE_MS for c in consumers):
            log.info("removing broadcast group %s of %s: idle for an hour", name, key)
            await client.xgroup_destroy(key, name)
