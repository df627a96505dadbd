"""The few Consul HTTP API calls the registry makes, over aiohttp.

Why not py-consul: its asyncio client warns at construction on the aiohttp installed here
(pytest runs with warnings as errors), reads every response whole with no size bound, and lets
`CONSUL_HTTP_TOKEN` override a token passed explicitly. The calls we need are six small HTTP
requests, so this module makes them itself, with the project's rules:

- the ACL token travels only in the `X-Consul-Token` header; no message, log line or repr
  names it (they name the registry URL, which never holds it);
- every response body is read up to `max_response` bytes, then refused;
- a request that cannot reach the agent is retried `retries` times with backoff, then raises
  RegistryError naming the URL; the agent's reachability is logged once per change (`Outage`);
- short requests and blocking queries use separate connection pools, so a heartbeat never
  waits behind long polls, and each pool is bounded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import aiohttp

from ...errors import RegistryError
from ..outage import Backoff, Outage

__all__ = ["Agent", "Reply"]

#: status codes worth another attempt: the agent is starting, has no leader yet, or is busy
_TRANSIENT = frozenset({429, 500, 502, 503, 504})
#: connections (and so requests under way) for short requests; more wait for a slot
_SHORT_CONNECTIONS = 16


class Reply:
    """One answer of the agent: HTTP status, `X-Consul-Index` (0 when absent), raw body."""

    __slots__ = ("body", "index", "status")

    def __init__(self, status: int, index: int, body: bytes) -> None:
        self.status = status
        self.index = index
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace").strip()[:200]


class Agent:
    """An HTTP client of one Consul agent, named `url` (without credentials) everywhere."""

    def __init__(
        self,
        url: str,
        base: str,
        *,
        token: str | None,
        timeout: float,
        retries: int,
        max_response: int,
        max_watch_connections: int,
        outage: Outage,
    ) -> None:
        self.url = url
        self._base = base
        self._headers = {"X-Consul-Token": token} if token else {}
        self.timeout = timeout
        self.retries = retries
        self.max_response = max_response
        self._max_watch_connections = max_watch_connections
        self.outage = outage
        self._inflight = 0  # requests under way, on either pool
        # short requests at once: a burst beyond the pool queues here, before its timeout
        # starts (aiohttp counts the wait for a pooled connection in the timeout, so 256
        # registrations at once timed out behind 16 connections to a -dev agent)
        self._slots = asyncio.Semaphore(_SHORT_CONNECTIONS)
        self._short: aiohttp.ClientSession | None = None
        self._long: aiohttp.ClientSession | None = None
        # bumped by aclose(): a request begun before it (queued for a slot, or between retries)
        # ends instead of opening new pools that nobody would close
        self._generation = 0

    def __repr__(self) -> str:
        return f"<Agent {self.url}>"  # never the headers: they hold the token

    def _session(self, long: bool) -> aiohttp.ClientSession:
        # created on first use, inside the running loop (aiohttp requires it)
        if long:
            if self._long is None:
                connector = aiohttp.TCPConnector(limit=self._max_watch_connections)
                self._long = aiohttp.ClientSession(connector=connector, headers=self._headers)
            return self._long
        if self._short is None:
            connector = aiohttp.TCPConnector(limit=_SHORT_CONNECTIONS)
            self._short = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._short

    async def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        body: Any = None,
        ok: frozenset[int] = frozenset({200}),
        wait: float | None = None,
        retries: int | None = None,
    ) -> Reply:
        """One request; `what` says in errors what it was for. A status outside `ok` raises.

        `body`: bytes are sent as they are (a KV value), anything else as JSON. `wait` makes
        it a blocking query (the agent answers when the index moves or after
        `wait` seconds). Retries apply to unreachable agents and transient statuses only.
        After a failure, with nothing else under way, the connection pools are closed (they
        open again on the next request): nothing is worth pooling while the agent is away or
        refusing us, and an owner that gives up on this error (a service that cannot start)
        leaves no open session behind.
        """
        try:
            return await self._attempts(method, path, what, params, body, ok, wait, retries)
        except RegistryError:
            if not self._inflight:
                await self.aclose()
            raise

    async def _attempts(
        self,
        method: str,
        path: str,
        what: str,
        params: dict[str, str] | None,
        body: Any,
        ok: frozenset[int],
        wait: float | None,
        retries: int | None,
    ) -> Reply:
        attempts = 1 + (self.retries if retries is None else retries)
        backoff = Backoff(0.1, 1.0)
        # bytes go as they are (a KV value); anything else is a JSON body
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        timeout = self.timeout + (wait * 17 / 16 if wait else 0)  # the agent adds wait/16 jitter
        last: Exception | None = None
        generation = self._generation
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(backoff.next())
            self._inflight += 1
            try:
                if wait is None:
                    async with self._slots:
                        self._still_open(generation, what)
                        reply = await self._once(method, path, params, data, timeout, long=False)
                else:
                    self._still_open(generation, what)
                    reply = await self._once(method, path, params, data, timeout, long=True)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = exc
                self.outage.failed(exc)
                continue
            finally:
                self._inflight -= 1
            self.outage.recovered()
            if reply.status in ok:
                return reply
            if reply.status in _TRANSIENT and attempt + 1 < attempts:
                last = RegistryError(f"{reply.status} {reply.text()}")
                continue
            raise _refused(self.url, what, reply)
        raise RegistryError(
            f"{self.url}: cannot {what}: the Consul agent is unreachable after {attempts} attempt(s) "
            f"({_describe(last)}); is `consul agent` running at that address?"
        )

    async def _once(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        data: bytes | None,
        timeout: float,
        *,
        long: bool,
    ) -> Reply:
        session = self._session(long)
        async with session.request(
            method,
            self._base + path,
            params=params,
            data=data,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(self.timeout, 5.0)),
        ) as response:
            if (response.content_length or 0) > self.max_response:
                raise RegistryError(self._too_big(path))
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > self.max_response:
                    raise RegistryError(self._too_big(path))
                chunks.append(chunk)
            try:
                index = int(response.headers.get("X-Consul-Index", "0"))
            except ValueError:
                index = 0
            return Reply(response.status, index, b"".join(chunks))

    def _too_big(self, path: str) -> str:
        return (
            f"{self.url}: the answer to {path.split('?')[0]} is larger than max_response="
            f"{self.max_response} bytes; raise it in the consul:// URL if that is expected"
        )

    def _still_open(self, generation: int, what: str) -> None:
        if generation != self._generation:
            raise RegistryError(f"{self.url}: cannot {what}: closed while the request waited")

    async def aclose(self) -> None:
        self._generation += 1
        for session in (self._short, self._long):
            if session is not None:
                await session.close()
        self._short = self._long = None


def path(*parts: str) -> str:
    """An API path with each variable part quoted (node ids may hold any character)."""
    return "/".join(quote(part, safe="") if i else part for i, part in enumerate(parts))


def _refused(url: str, what: str, reply: Reply) -> RegistryError:
    detail = reply.text() or "no detail"
    if reply.status in (401, 403):
        hint = "check the ACL token (?token= in the consul:// URL, or CONSUL_HTTP_TOKEN)"
        refused = f"the Consul agent refused it ({reply.status} {detail})"
        return RegistryError(f"{url}: cannot {what}: {refused}; {hint}", code=reply.status)
    # a request the agent rejects is not fixed by waiting: its own code, so nobody retries it
    code = reply.status if 400 <= reply.status < 500 else None
    return RegistryError(
        f"{url}: cannot {what}: the Consul agent answered {reply.status} {detail}", code=code
    )


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
