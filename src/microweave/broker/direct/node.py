"""The broker's own node, for subscriptions made without a Service (`broker.subscribe(...)`).

It listens on tcp (and the in-process fast path) and registers one record per subscription in
the bound client's registry: a service of its own name (`<name>-subscriber-<id>`) with one
subscriber endpoint, on this node. One record per subscription, not one for the node, because a
registry merges the records of one service and version into one endpoint list: records that
changed their endpoints as subscriptions come and go would be read wrong by caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import uuid
from typing import TYPE_CHECKING, Final

from ..._backends import settings
from ...lifecycle import Listeners, Registration
from ...registry import Endpoint, Node, Registry
from ...registry import Service as ServiceRecord
from ...server import Router, grpc_path
from ...server.handlers import camel
from ...server.pipeline import Pipeline
from ...server.threads import WorkerThreads
from ...transport import advertised
from .. import Event, Subscription
from ..subscriber import SUBSCRIBER_HANDLER, Subscriber
from .inbound import Inbound

if TYPE_CHECKING:
    from ...transport import ServerTransport

__all__ = ["OwnNode"]

log = logging.getLogger("microweave.broker")

#: seconds a deregistration may take on unsubscribe (the TTL removes the record anyway)
DEREGISTER_TIMEOUT: Final = 5.0


def _handler_name(handler: object) -> str:
    name = getattr(handler, "__name__", None) or type(handler).__name__
    return camel(re.sub(r"\W", "", name)) or "Handle"


class OwnNode:
    def __init__(
        self,
        registry: Registry,
        *,
        name: str,
        address: str,
        ttl: float,
        start_timeout: float,
        grace: float,
        max_message: int = 4 * 1024 * 1024,
    ) -> None:
        self.registry = registry
        self.name = re.sub(r"[^\w.-]", "-", name) or "microweave"
        self.address = address
        self.ttl = ttl
        self.start_timeout = start_timeout
        self.node_id = f"{self.name}-subscriber-{uuid.uuid4()}"
        self.router = Router(package=self.name)
        self.pipeline = Pipeline(
            self.router, max_message=max_message, threads=WorkerThreads(1, name=f"{self.name}-events")
        )
        self._transport = self._tcp(max_message)
        self.listeners = Listeners(
            self.pipeline, [(self._transport, address)], node_id=self.node_id, grace=grace,
            advertise=functools.partial(advertised, host=settings().advertise_address),
        )  # fmt: skip
        self._started = False
        self._starting = asyncio.Lock()
        self._registrations: dict[Subscription, tuple[Registration, Subscriber]] = {}

    @staticmethod
    def _tcp(max_message: int) -> ServerTransport:
        from ...transport.tcp import TcpServer

        return TcpServer(max_frame_size=max_message)

    def _node(self) -> Node:
        metadata = {
            "broker": "direct",
            "transport": "tcp",
            "registry": self.registry.scheme,
            **{f"{k}_address": v for k, v in self.listeners.addresses.items()},
        }
        return Node(id=self.node_id, address="", metadata=metadata)

    async def add(self, sub: Subscription) -> None:
        """Serve `sub` at a path of its own and register it; raises what registering raised."""
        async with self._starting:
            if not self._started:
                await self.listeners.start()
                self._started = True
        service = f"{self.name}-subscriber-{uuid.uuid4().hex[:12]}"
        endpoint = f"{SUBSCRIBER_HANDLER}.{_handler_name(sub.handler)}"
        inbound = Inbound(sub, name=endpoint, path=grpc_path(service, endpoint))
        subscriber = Subscriber(
            sub.topic, sub.queue, sub.ack, sub.max_in_flight, Event, inbound.target, inbound
        )
        record = ServiceRecord(
            name=service,
            endpoints=[Endpoint(name=endpoint, metadata=subscriber.metadata)],
            nodes=[self._node()],
        )
        registration = Registration(
            self.registry, lambda: record, ttl=self.ttl, drain_delay=0.0, start_timeout=self.start_timeout
        )
        self.router.add_subscriber(subscriber)
        try:
            await registration.start()
        except BaseException:
            self._forget(subscriber)
            raise
        self._registrations[sub] = (registration, subscriber)

    async def remove(self, sub: Subscription) -> None:
        """Refuse `sub`'s events from now on (a queue group's publisher tries another member),
        and leave the registry."""
        entry = self._registrations.pop(sub, None)
        if entry is None:
            return
        registration, subscriber = entry
        self._forget(subscriber)
        try:
            async with asyncio.timeout(DEREGISTER_TIMEOUT):
                await registration.stop()
        except Exception as exc:  # the record's TTL removes it anyway
            log.warning(
                "could not deregister the subscriber of %s from %r: %s", sub.topic, self.registry, exc
            )

    def _forget(self, subscriber: Subscriber) -> None:
        subscriber.inbound = None
        path = subscriber.target.path
        self.router.subscribers.pop(path, None)
        self.router.targets.pop(path, None)

    async def aclose(self) -> None:
        for sub in list(self._registrations):
            await self.remove(sub)
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                await self.listeners.stop()

    def __repr__(self) -> str:
        return f"<direct:// node {self.node_id} at {self.listeners.addresses.get('tcp', self.address)}>"
