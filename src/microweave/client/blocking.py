"""A blocking client for scripts and notebooks: the async client on a loop in its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..registry import Registry, Service
from ..selector import Filter
from ..transport import ClientTransport
from . import DEFAULT_TIMEOUT, Client, Retry
from .call import UNSET, Unset

if TYPE_CHECKING:
    from ..middleware import ClientMiddleware

__all__ = ["BlockingClient"]

T = TypeVar("T")
_RETRY = Retry()


class BlockingClient:
    """`BlockingClient().call("greeter", "Greeter.SayHello", {"name": "x"})` from plain code.

    Works inside Jupyter too, where a loop already runs in the main thread: ours has its own.
    """

    def __init__(
        self,
        *,
        registry: Registry | str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: Retry = _RETRY,
        middleware: Sequence[ClientMiddleware] = (),
        transports: Sequence[str | ClientTransport] = ("tcp", "grpc"),
        name: str = "",
    ) -> None:
        """The same options as `Client`."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="microweave-client", daemon=True)
        self._thread.start()

        async def make() -> Client:  # built on its loop: it binds asyncio objects there
            return Client(
                registry=registry, timeout=timeout, retry=retry, middleware=middleware,
                transports=transports, name=name,
            )  # fmt: skip

        self._client: Client = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def registry(self) -> Registry:
        return self._client.registry

    def call(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: Any = None,
        timeout: float | Unset | None = UNSET,
        metadata: Mapping[str, str] | None = None,
        filters: Sequence[Filter] = (),
        idempotent: bool | None = None,
    ) -> Any:
        """Same arguments as `Client.call`; blocks until the reply or the error."""
        return self._run(
            self._client.call(
                service, endpoint, request, response=response, timeout=timeout, metadata=metadata,
                filters=filters, idempotent=idempotent,
            )
        )  # fmt: skip

    def stream(
        self,
        service: str,
        endpoint: str,
        request: Any,
        *,
        response: Any = None,
        timeout: float | Unset | None = UNSET,
        metadata: Mapping[str, str] | None = None,
        filters: Sequence[Filter] = (),
    ) -> list[Any]:
        """A server-streaming call, collected into a list."""

        async def collect() -> list[Any]:
            replies = self._client.stream(
                service, endpoint, request, response=response, timeout=timeout, metadata=metadata,
                filters=filters,
            )  # fmt: skip
            return [r async for r in replies]

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
