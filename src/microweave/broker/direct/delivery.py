"""The publisher's side of `direct://`: one event to the subscribers a `Directory` found.

Each delivery is a unary call through the client's pipeline (its middleware, the publish's
deadline, its transports: in-process, tcp, gRPC), pinned to the node it is for. Every
broadcast destination gets one call; each queue group gets one, to one member picked round robin
(members that were unreachable lately last). A member that did not take the event (unreachable,
draining, no longer subscribed) never ran it, so the next member is tried: still at most once.
A call that may have reached the handler (it timed out, the connection broke) is never sent
again. A delivery that fails is logged with the event id; it never makes the publish raise.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from ...errors import (
    ConnectionLost,
    MicroError,
    NotDelivered,
    NotFound,
    NotImplementedError_,
    Timeout,
)
from .directory import Destination, Subscribers

if TYPE_CHECKING:
    from ...client import Client

__all__ = ["Courier"]

log = logging.getLogger("microweave.broker")

#: seconds a node that could not be reached is tried last in its group (and skipped by broadcasts)
DOWN_FOR: Final = 5.0
#: nodes and (topic, queue) turns remembered at most: bounds, not leaks
MAX_REMEMBERED: Final = 4_096


class Courier:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._turns: dict[tuple[str, str], int] = {}
        self._down: dict[str, float] = {}  # node id -> loop time until which it counts as down

    async def deliver(
        self,
        found: Subscribers,
        topic: str,
        event_id: str,
        body: bytes,
        metadata: dict[str, str],
        content_type: str,
        *,
        deadline: float,
    ) -> None:
        """Returns once every delivery was answered (its handler ran, or failed), or given up."""
        jobs = [
            self._to_each(d, topic, event_id, body, metadata, content_type, deadline) for d in found.broadcast
        ]
        jobs += [
            self._to_group(queue, members, topic, event_id, body, metadata, content_type, deadline)
            for queue, members in found.groups.items()
        ]  # fmt: skip
        if len(jobs) == 1:
            await jobs[0]
        else:
            await asyncio.gather(*jobs)

    async def _to_each(
        self, dest: Destination, topic: str, event_id: str, body: bytes, metadata: dict[str, str],
        content_type: str, deadline: float,
    ) -> None:  # fmt: skip
        if self._is_down(dest.node.id):
            log.debug("event %s on %s: skipped %r, unreachable lately", event_id, topic, dest)
            return
        await self._send(dest, topic, event_id, body, metadata, content_type, deadline)

    async def _to_group(
        self, queue: str, members: list[Destination], topic: str, event_id: str, body: bytes,
        metadata: dict[str, str], content_type: str, deadline: float,
    ) -> None:  # fmt: skip
        tried = 0
        for dest in self._order(topic, queue, members):
            tried += 1
            if await self._send(dest, topic, event_id, body, metadata, content_type, deadline):
                return
        log.warning(
            "event %s on %s: none of the %d members of queue group %r took it: dropped "
            "(direct:// delivers at most once)",
            event_id, topic, tried, queue,
        )  # fmt: skip

    def _order(self, topic: str, queue: str, members: list[Destination]) -> list[Destination]:
        """Round robin from this group's next turn; members unreachable lately go last."""
        key = (topic, queue)
        turn = self._turns.get(key, 0)
        if len(self._turns) >= MAX_REMEMBERED and key not in self._turns:
            self._turns.clear()
        self._turns[key] = turn + 1
        start = turn % len(members)
        rotated = members[start:] + members[:start]
        if not self._down:
            return rotated
        up = [d for d in rotated if not self._is_down(d.node.id)]
        return up + [d for d in rotated if self._is_down(d.node.id)]

    async def _send(
        self, dest: Destination, topic: str, event_id: str, body: bytes, metadata: dict[str, str],
        content_type: str, deadline: float,
    ) -> bool:  # fmt: skip
        """Whether `dest` took the event (its handler ran, or may have): False only when it
        certainly did not, so another member of its group may get it."""
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.warning(
                "event %s on %s: the publish timeout passed before %r was tried: not delivered there",
                event_id, topic, dest,
            )  # fmt: skip
            return True
        try:
            await self.client.call_raw(
                dest.service, dest.path, body, timeout=left, metadata=metadata,
                content_type=content_type, filters=(dest.only,), idempotent=False,
            )  # fmt: skip
        except MicroError as exc:
            return self._failed(dest, topic, event_id, exc)
        if self._down.pop(dest.node.id, None) is not None:
            log.info("node %s takes direct:// events again", dest.node.id)
        return True

    def _failed(self, dest: Destination, topic: str, event_id: str, exc: MicroError) -> bool:
        if isinstance(exc, Timeout):
            log.warning(
                "event %s on %s: no answer from %r within the publish timeout; its handler may still "
                "be running, and it is not sent again (at most once)",
                event_id, topic, dest,
            )  # fmt: skip
            return True
        if exc.remote:
            if isinstance(exc, NotImplementedError_ | NotFound):  # not subscribed there (any more)
                log.debug("event %s on %s: %r does not take it: %s", event_id, topic, dest, exc.detail)
                return False
            # the subscriber ran and failed: its node logged why, under the event id
            log.debug("event %s on %s: %r answered %d: %s", event_id, topic, dest, exc.code, exc.detail)
            return True
        if isinstance(exc, ConnectionLost):
            log.warning(
                "event %s on %s: the connection to %r broke mid-delivery; its handler may have run, "
                "and it is not sent again (at most once)",
                event_id, topic, dest,
            )  # fmt: skip
            return True
        if isinstance(exc, NotDelivered | NotFound):  # unreachable, draining, or gone from the registry
            self._mark_down(dest, exc)
            return False
        log.warning("event %s on %s could not be sent to %r: %s", event_id, topic, dest, exc.detail)
        return True

    def _is_down(self, node_id: str) -> bool:
        until = self._down.get(node_id)
        if until is None:
            return False
        if asyncio.get_running_loop().time() < until:
            return True
        del self._down[node_id]
        return False

    def _mark_down(self, dest: Destination, exc: MicroError) -> None:
        node_id = dest.node.id
        if not self._is_down(node_id):
            log.warning(
                "direct:// cannot reach node %s of %s (%s): its events are dropped, and its queue "
                "groups use other members, while it stays unreachable",
                node_id, dest.service, exc.detail,
            )  # fmt: skip
        if len(self._down) >= MAX_REMEMBERED:
            self._down.clear()
        self._down[node_id] = asyncio.get_running_loop().time() + DOWN_FOR
