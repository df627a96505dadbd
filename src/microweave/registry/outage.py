"""What every registry backend does while its engine is away: back off, and say so once.

A registry that dies mid-run must not turn into a busy loop or a traceback storm. Each piece of
code that talks to an engine in a loop (a watch, a heartbeat, a keep-alive stream) keeps one
`Outage`: `failed(exc)` returns how long to sleep before the next attempt (exponential with
jitter, capped) and logs one warning when the engine goes from reachable to unreachable;
`recovered()` logs one line when it comes back, with how long it was away. Attempts in between
log at debug level only.
"""

from __future__ import annotations

import logging
import random
import time

__all__ = ["Backoff", "Outage"]


class Backoff:
    """Exponential delays with full jitter: `first`, doubling, never above `cap` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._delay = 0.0

    def next(self) -> float:
        self._delay = min(self.cap, self._delay * 2 if self._delay else self.first)
        # jitter keeps a fleet of nodes from reconnecting in lockstep after an engine restart
        return self._delay / 2 + random.uniform(0, self._delay / 2)

    def reset(self) -> None:
        self._delay = 0.0


class Outage:
    """The state (up or down) of one connection to a registry engine, logged on change only.

    `what` names it in the log, e.g. "etcd://127.0.0.1:2379 watch"; never put credentials in it.
    """

    def __init__(
        self,
        what: str,
        *,
        logger: logging.Logger | None = None,
        first: float = 0.1,
        cap: float = 5.0,
    ) -> None:
        self.what = what
        self.log = logger or logging.getLogger("microweave.registry")
        self.backoff = Backoff(first, cap)
        self.down_since: float | None = None
        self.attempts = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; the seconds to wait before the next one."""
        self.attempts += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.log.warning("%s unreachable, retrying with backoff: %s", self.what, _describe(exc))
        else:
            self.log.debug("%s still unreachable (attempt %d): %s", self.what, self.attempts, _describe(exc))
        return self.backoff.next()

    def recovered(self) -> None:
        """Record a successful attempt; logs once if the engine had been unreachable."""
        if self.down_since is not None:
            away = time.monotonic() - self.down_since
            self.log.warning("%s reachable again after %.1f s", self.what, away)
        self.down_since = None
        self.attempts = 0
        self.backoff.reset()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
