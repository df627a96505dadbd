"""Which stream holds a topic: one found on the server, else one we create per topic.

A stream someone already made (say one capturing `orders.>`) is used as it is: we ask the
server which stream captures the subject before creating anything. Otherwise each topic gets a
stream of its own capturing the topic and its dead-letter topic (so a subscriber of
`t.dead-letter` and the dead-lettering of `t` meet in one stream, whichever comes first), on
file storage, bounded by `max_msgs`, `max_bytes` and `max_age` (the oldest go first), with a
duplicate window for `Nats-Msg-Id` deduplication.

Names are derived from the topic, deterministically, so every process finds the same stream
and consumer: the topic's safe characters (letters, digits, `-`, `_`) and a hash of the whole
topic, since two topics may clean up to the same text (`a.b` and `a_b`).
"""

from __future__ import annotations

import hashlib
import re

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from .. import DEAD_LETTER_SUFFIX, dead_letter_topic

__all__ = ["Streams", "consumer_name", "stream_name"]

#: topics whose stream we remember; past this, the memory starts over (a lookup is cheap)
KNOWN_TOPICS = 10_000
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _clean(text: str, limit: int) -> str:
    return _UNSAFE.sub("_", text)[:limit].strip("_") or "x"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def stream_name(topic: str) -> str:
    """`MW_<topic's safe characters>_<hash>`: valid (no `.`, `*`, `>`, spaces) and the same
    in every process."""
    return f"MW_{_clean(topic, 64)}_{_digest(topic)}"


def consumer_name(stream: str, queue: str, topic: str) -> str:
    """The durable consumer of queue group `queue` on `topic` in `stream`: one per
    (stream, queue, topic), the same in every member of the group."""
    return f"{_clean(queue, 48)}_{_clean(topic, 48)}_{_digest(stream, queue, topic)}"


class Streams:
    """Finds or creates the stream of each topic, and remembers the answer."""

    def __init__(self, *, max_msgs: int, max_bytes: int, max_age: float, duplicate_window: float) -> None:
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.duplicate_window = duplicate_window
        self._known: dict[str, str] = {}

    def forget(self, topic: str) -> None:
        """The server said no stream captures `topic` (deleted, or a server that lost it)."""
        self._known.pop(topic, None)

    async def stream_for(self, js: JetStreamContext, topic: str) -> str:
        name = self._known.get(topic)
        if name is not None:
            return name
        try:
            name = await js.find_stream_name_by_subject(topic)
        except NotFoundError:
            name = await self._create(js, topic)
        if len(self._known) >= KNOWN_TOPICS:
            self._known.clear()
        self._known[topic] = name
        return name

    def config(self, name: str, subjects: list[str]) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=subjects,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_msgs=self.max_msgs,
            max_bytes=self.max_bytes,
            max_age=self.max_age,
            duplicate_window=self.duplicate_window,
            num_replicas=1,
        )

    async def _create(self, js: JetStreamContext, topic: str) -> str:
        # the stream of `t` captures `t.dead-letter` too; a dead-letter topic's stream is its
        # topic's. When another stream already captures part of that (a stream of the user's,
        # or `t.dead-letter.dead-letter` next to the stream of `t`), the topic gets one alone.
        owner = topic.removesuffix(DEAD_LETTER_SUFFIX)
        choices = [[owner, dead_letter_topic(owner)], [topic]]
        for subjects in choices:
            name = stream_name(subjects[0])
            try:
                await js.add_stream(self.config(name, subjects))
            except APIError:
                try:  # another process created one meanwhile, or a stream overlaps: which?
                    return await js.find_stream_name_by_subject(topic)
                except NotFoundError:
                    if subjects is choices[-1]:
                        raise
                    continue
            return name
        raise AssertionError("unreachable")  # pragma: no cover
