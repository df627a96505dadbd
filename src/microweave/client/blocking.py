"""A blocking client for scripts and notebooks: the async client on a loop in its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..registry import Registry, Service
from . import Client

__all__ = ["BlockingClient"]

T = TypeVar("T")


class BlockingClient:
    """`BlockingClient().call("greeter", "Greeter.SayHello", {"name": "x"})` from plain code.

    Works inside Jupyter too, where a loop already runs in the main thread: ours has its own.
    """

    def __init__(self, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="microweave-client", daemon=True)
        self._thread.start()
        self._client: Client = self._run(self._make(options))

    @staticmethod
    async def _make(options: dict[str, Any]) -> Client:
        return Client(**options)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def registry(self) -> Registry:
        return self._client.registry

    def call(self, service: str, endpoint: str, request: Any, **options: Any) -> Any:
        """Same arguments as `Client.call`; blocks until the reply or the error."""
        return self._run(self._client.call(service, endpoint, request, **options))

    def stream(self, service: str, endpoint: str, request: Any, **options: Any) -> list[Any]:
        """A server-streaming call, collected into a list."""

        async def collect() -> list[Any]:
            return [r async for r in self._client.stream(service, endpoint, request, **options)]

        return self._run(collect())

    def get_service(self, name: str) -> list[Service]:
        return self._run(self._client.registry.get_service(name))

    def list_services(self) -> list[Service]:
        return self._run(self._client.registry.list_services())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
