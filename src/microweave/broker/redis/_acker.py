"""A subscription's acknowledgements, sent together: one XACK carries every entry handlers
acknowledged while the previous XACK was on the wire.

`ack()` does not wait for the XACK (as AMQP's basic.ack): an ack lost to a crash or an outage
leaves its entry pending, to be claimed and delivered again after `claim_idle`. An entry stays
in its consumer's `held` until its XACK is done, so what waits here is bounded by it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ..._tasks import cancel_all

if TYPE_CHECKING:
    from . import RedisBroker

__all__ = ["Acker"]

log = logging.getLogger("microweave.broker.redis")

#: entry ids per XACK
CHUNK: Final = 1000


class Acker:
    def __init__(
        self, broker: RedisBroker, *, key: str, group: str, topic: str, done: Callable[[bytes], None]
    ) -> None:
        self.broker = broker
        self.key = key
        self.group = group
        self.topic = topic
        self._done = done  # called for each entry once its XACK is over (sent or given up)
        self._waiting: list[bytes] = []
        #: acknowledged and not XACKed yet (waiting, or in the XACK on the wire)
        self.pending = 0
        self._wanted = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"redis-ack-{self.key}")

    def add(self, entry_id: bytes) -> None:
        self._waiting.append(entry_id)
        self.pending += 1
        self._wanted.set()

    async def close(self) -> None:
        """Send what is waiting (bounded by the broker's retries), then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wanted.set()
        await asyncio.wait([self._task], timeout=self.broker.retry_for + self.broker.timeout)
        await cancel_all([self._task])
        self._task = None

    async def _run(self) -> None:
        while not self._closing:
            await self._wanted.wait()
            self._wanted.clear()
            while self._waiting:
                await self._send()

    async def _send(self) -> None:
        batch = self._waiting[:CHUNK]
        del self._waiting[:CHUNK]
        client = self.broker.client
        try:
            await self.broker.call(
                f"acknowledge {len(batch)} events on {self.topic}",
                lambda: client.xack(self.key, self.group, *batch),
            )
        except Exception as exc:  # left pending: claimed and delivered again after claim_idle
            log.warning("%s; those events will be delivered again", exc)
        finally:
            self.pending -= len(batch)
            for entry_id in batch:
                self._done(entry_id)
