"""`consul://host:port?ttl=&token=`: the registry on a Consul agent, in go-micro's encoding.

Each node is one Consul service instance registered with the local agent (ID = node id, Name
= service name, tags as go-micro writes them: see encoding.py), with a TTL check passed by the
heartbeat. Lookups read `/v1/health/service/<name>` and leave out instances with a critical
check, so a node that stopped heartbeating disappears after its TTL although Consul removes it
only a minute or more later. Watches are blocking queries (watch.py). Consul's own `consul`
service (its servers' RPC port, not a service of ours) is left out of listings and watches.

URL options (explicit keyword arguments win over the URL, the URL over the environment):

    token=        ACL token (else CONSUL_HTTP_TOKEN); sent as X-Consul-Token, never shown
    ttl=          seconds; the TTL of registrations made without one (default: none)
    wait=         seconds a blocking query waits at most (default 30)
    timeout=      seconds for one request, besides a blocking query's wait (default 5)
    retries=      extra attempts of a request that cannot reach the agent (default 2)
    max_queries=  re-reads a watch of every service runs at once (default 8)
    watch_buffer= unread events a watcher holds before it sends RESYNC (default 10000)
    max_response= bytes of one answer, at most (default 32 MiB)
    restart_grace= seconds a watch keeps the nodes an agent lost by restarting, while they
                  register again (default 15; 0: report them deleted at once)

Heartbeat: `register()` of a record this instance registered unchanged is one check pass.
If the agent no longer knows the check (it restarted: a dev agent forgets everything), the
pass fails with 404 and the node is registered again, so nodes come back by themselves.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from ..._backends import BackendURL
from ...errors import ConfigurationError, RegistryError
from .. import Registry, Service, Watcher, merge_nodes
from ..outage import Outage
from ..url_options import typed_options
from .agent import Agent, path
from .encoding import registration
from .watch import CONSUL, ConsulWatcher, query, read_service, versions

__all__ = ["ConsulRegistry"]

DEFAULT_PORT = 8500
WATCH_BUFFER = 10_000
_OPTIONS: dict[str, type] = {
    "ttl": float,
    "wait": float,
    "timeout": float,
    "retries": int,
    "max_queries": int,
    "watch_buffer": int,
    "max_response": int,
    "restart_grace": float,
}
_catalog = msgspec.json.Decoder(dict[str, list[str] | None])


class ConsulRegistry(Registry):
    scheme = "consul"

    def __init__(
        self,
        address: str = f"127.0.0.1:{DEFAULT_PORT}",
        *,
        token: str | None = None,
        ttl: float | None = None,
        wait: float = 30.0,
        timeout: float = 5.0,
        retries: int = 2,
        max_queries: int = 8,
        watch_buffer: int = WATCH_BUFFER,
        max_response: int = 32 << 20,
        restart_grace: float = 15.0,
    ) -> None:
        host, sep, port = address.rpartition(":")
        if not sep:
            host, port = address, str(DEFAULT_PORT)
        if not port.isdigit() or not host:
            raise ConfigurationError(f"consul://{address}: the address must be host:port")
        for name, value, low in (
            ("wait", wait, 0.001),
            ("timeout", timeout, 0.001),
            ("retries", retries, 0),
            ("max_queries", max_queries, 1),
            ("watch_buffer", watch_buffer, 1),
            ("max_response", max_response, 1024),
            ("restart_grace", restart_grace, 0),
        ):
            if value < low:
                raise ConfigurationError(f"consul://{address}: {name}={value} is below its minimum {low}")
        self.address = f"{host}:{port}"
        self.url = f"consul://{self.address}"  # what errors and logs name: never the token
        self.ttl = ttl or None
        self.wait = wait
        self.max_queries = max_queries
        self.watch_buffer = watch_buffer
        self.restart_grace = restart_grace
        token = token if token is not None else os.environ.get("CONSUL_HTTP_TOKEN") or None
        self._agent = Agent(
            self.url,
            f"http://{self.address}",
            token=token,
            timeout=timeout,
            retries=retries,
            max_response=max_response,
            max_watch_connections=64,
            outage=Outage(f"{self.url} (Consul agent)"),
        )
        # node id -> the registration body last accepted: the same again is a check pass
        self._registered: dict[str, bytes] = {}
        self._watchers: set[ConsulWatcher] = set()

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> ConsulRegistry:
        if len(url.hosts) > 1:
            raise ConfigurationError(
                "consul:// takes one agent address: register with the agent of this host "
                "(the Consul cluster spreads it), not a list"
            )
        if url.path not in ("", "/"):
            raise ConfigurationError(f"consul://{','.join(url.hosts)}{url.path}: Consul URLs have no path")
        public = f"consul://{','.join(url.hosts)}"  # the token is never in the address
        kwargs = typed_options(public, url.query, kwargs, {**_OPTIONS, "token": str})
        return cls(url.hosts[0] if url.hosts else f"127.0.0.1:{DEFAULT_PORT}", **kwargs)

    def __repr__(self) -> str:
        return f"<ConsulRegistry {self.url}>"

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        ttl = ttl or self.ttl
        for node in service.nodes:
            body = registration(service, node, ttl)
            key = msgspec.json.encode(body)
            if ttl and self._registered.get(node.id) == key and await self._pass(node.id):
                continue  # the heartbeat: one request
            what = f"register {service.name} node {node.id}"
            await self._agent.call("PUT", "/v1/agent/service/register", what=what, body=body)
            self._registered[node.id] = key

    async def _pass(self, node_id: str) -> bool:
        """Pass the node's TTL check; False when the agent does not know it (any more)."""
        reply = await self._agent.call(
            "PUT",
            path("/v1/agent/check/pass", f"service:{node_id}"),
            what=f"pass the TTL check of node {node_id}",
            ok=frozenset({200, 404}),
        )
        return reply.status == 200

    async def deregister(self, service: Service) -> None:
        for node in service.nodes:
            self._registered.pop(node.id, None)
            await self._agent.call(
                "PUT",
                path("/v1/agent/service/deregister", node.id),
                what=f"deregister {service.name} node {node.id}",
                ok=frozenset({200, 404}),  # already gone is what we wanted
            )

    async def get_service(self, name: str) -> list[Service]:
        _, snapshot = await read_service(self._agent, name)
        return merge_nodes(list(snapshot.values()))

    async def list_services(self) -> list[Service]:
        _, body = await query(self._agent, "/v1/catalog/services", "list services")
        try:
            catalog = _catalog.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RegistryError(f"{self.url}: unexpected answer listing services: {exc}") from None
        return [record for name, tags in catalog.items() if name != CONSUL for record in versions(name, tags)]

    async def watch(self, service: str | None = None) -> Watcher:
        watcher = ConsulWatcher(
            self._agent,
            service,
            buffer=self.watch_buffer,
            wait=self.wait,
            max_queries=self.max_queries,
            restart_grace=self.restart_grace,
            on_close=self._watchers.discard,
        )
        self._watchers.add(watcher)
        await watcher.start()
        return watcher

    async def aclose(self) -> None:
        for watcher in list(self._watchers):
            await watcher.aclose()
        await self._agent.aclose()
