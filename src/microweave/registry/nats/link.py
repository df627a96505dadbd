"""One NATS connection, kept up by us: connect, notice the loss, reconnect with backoff.

nats-py can reconnect by itself, but at a fixed interval, logging through its own error
callback, and (with reconnection off) trying only the first server of the pool. We turn its
reconnection off and run one supervisor per link instead: every server of the URL in turn,
jittered capped backoff, one log line when NATS goes away and one when it is back (`Outage`).
Subscriptions belong to a connection, so after each (re)connect the owner's `on_connect`
re-creates them and re-announces what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

from ...errors import RegistryError
from ..outage import (
    Outage,
    _describe,  # the same one-line form as the Outage's log lines
)

__all__ = ["Link"]

log = logging.getLogger("microweave.registry")

CONNECT_TIMEOUT = 2.0  # seconds per server per attempt
#: seconds between client PINGs: a connection that silently died is noticed within ~3 of these
PING_INTERVAL = 10
#: the longest wait between two reconnect attempts (jittered): a node is back soon after NATS
RECONNECT_CAP = 2.0


class Link:
    """The connection of one NatsRegistry. `url` names it in errors and logs (no credentials)."""

    def __init__(
        self,
        url: str,
        servers: list[str],
        *,
        on_connect: Callable[[Client, bool], Awaitable[None]],
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        self.servers = servers
        self._on_connect = on_connect
        self._auth = {"user": user, "password": password, "token": token}
        self.connect_timeout = connect_timeout
        self.outage = Outage(f"{url} (NATS registry)", logger=log, cap=RECONNECT_CAP)
        self.nc: Client | None = None
        self._lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self._why = ""
        self.connects = 0  # how many connections were made (tests read it)

    @property
    def up(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def client(self) -> Client:
        """The live connection; RegistryError naming the URL when there is none."""
        nc = self.nc
        if nc is not None and nc.is_connected:
            return nc
        if self._closed:
            raise RegistryError(f"{self.url} registry is closed")
        if self._supervisor is not None and not self._supervisor.done():
            raise RegistryError(
                f"NATS at {self.url} is unreachable ({self._why}); reconnecting in the background"
            )
        async with self._lock:
            if self.nc is not None and self.nc.is_connected:
                return self.nc
            try:
                return await self._connect()
            except RegistryError as exc:
                self._supervise(exc)  # keep trying in the background; callers fail fast meanwhile
                raise

    async def _connect(self) -> Client:
        errors: list[str] = []
        for server in self.servers:
            nc = Client()
            seen: list[BaseException] = []

            async def failed(exc: Exception, seen: list[BaseException] = seen) -> None:
                seen.append(exc)
                await self._error(exc)

            try:
                # nats-py retries a server of its pool until it has failed more than
                # max_reconnect_attempts times (0 means forever): 1, no wait, is two quick tries
                async with asyncio.timeout(2 * self.connect_timeout + 1):
                    await nc.connect(
                        servers=[server],
                        allow_reconnect=False,
                        connect_timeout=max(1, round(self.connect_timeout)),
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0,
                        error_cb=failed,
                        name="microweave registry",
                        ping_interval=PING_INTERVAL,
                        max_outstanding_pings=2,
                        **{k: v for k, v in self._auth.items() if v},  # type: ignore[arg-type]
                    )
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                errors.append(f"{server.removeprefix('nats://')}: {_describe(seen[-1] if seen else exc)}")
                with contextlib.suppress(Exception):
                    await nc.close()
                continue
            nc._error_cb = self._error  # this attempt's list is done
            nc._closed_cb = self._lost  # only a connection that was made can be lost
            self.nc = nc
            self.connects += 1
            try:
                await self._on_connect(nc, self.connects > 1)
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                self.nc = None
                with contextlib.suppress(Exception):
                    await nc.close()
                errors.append(f"{server.removeprefix('nats://')}: {_describe(exc)}")
                continue
            return nc
        raise RegistryError(
            f"cannot reach NATS at {self.url} ({'; '.join(errors)}); "
            "is nats-server running there, and are the URL's credentials right?"
        )

    async def _error(self, exc: Exception) -> None:
        # nats-py reports every socket error here; the Outage says it once, so debug only
        log.debug("%s: %s", self.url, _describe(exc))

    async def _lost(self) -> None:
        if not self._closed:
            self._supervise(RegistryError(f"connection to {self.url} lost"))

    def _supervise(self, why: RegistryError) -> None:
        if self._closed or (self._supervisor is not None and not self._supervisor.done()):
            return
        self._why = "connection lost" if self.connects else "never connected"
        self._supervisor = asyncio.get_running_loop().create_task(self._reconnect(why))

    async def _reconnect(self, why: RegistryError) -> None:
        delay = self.outage.failed(why)
        while not self._closed:
            await asyncio.sleep(delay)
            async with self._lock:
                if self._closed:
                    return
                try:
                    await self._connect()
                except RegistryError as exc:
                    delay = self.outage.failed(exc)
                    continue
            self.outage.recovered()
            return

    async def aclose(self) -> None:
        self._closed = True
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
