"""Where an attempt goes: a node from the registry cache and the transport that reaches it, and
what the registry says of an endpoint (its path, its call kind, whether it is idempotent)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import NotDelivered, NotImplementedError_, ServiceNotFound
from ..registry import Node
from ..registry import Service as ServiceRecord
from ..registry.cache import RegistryCache
from ..selector import Selector
from ..server import Kind, grpc_path
from ..transport import ClientTransport
from .call import ClientCall

__all__ = ["Routing"]

_MOCK_NODE = Node(id="mock", address="")
_KINDS = {kind.value: kind for kind in Kind}
_KIND_NAMES = {
    Kind.UNARY: "unary",
    Kind.SERVER_STREAM: "server-streaming",
    Kind.CLIENT_STREAM: "client-streaming",
    Kind.BIDI: "bidirectional-streaming",
}


class Routing:
    def __init__(
        self,
        cache: RegistryCache,
        selector: Selector,
        transports: Sequence[ClientTransport],
        registry_name: str,
    ) -> None:
        self.cache = cache
        self.selector = selector
        self.transports = tuple(transports)
        self.registry_name = registry_name  # for "not found in ..." messages
        self._paths: dict[str, dict[str, str]] = {}  # service -> endpoint name -> gRPC path
        self._kinds: dict[str, dict[str, Kind]] = {}  # node id -> endpoint path -> call kind

    def route(
        self, call: ClientCall, services: list[ServiceRecord] | None = None
    ) -> tuple[ClientTransport, str] | None:
        """Select a node for this attempt and the transport that reaches it, from the registry
        cache; None when the cache holds nothing fresh for the service: then ask the registry
        and pass what it said as `services`. (Synchronous: the common case awaits nothing.)"""
        first = self.transports[0]
        if not first.discovers:  # a test double that answers for every service
            call.node, call.transport = _MOCK_NODE, first.name
            return first, ""
        if services is None:
            services = self.cache.fresh(call.service)
            if services is None:
                return None
        if not services:
            raise ServiceNotFound(
                f"service {call.service} not found in {self.registry_name}; "
                "is it running, and on the same registry?",
                id="microweave.client",
            )
        self._learn_path(call, services)
        node = self.selector.select(call.service, services, call.filters, call.tried)
        for transport in self.transports:
            address = transport.address_of(node)
            if address:
                if not transport.call_kind_on_wire:
                    self._check_kind(call, node)
                call.node, call.transport = node, transport.name
                self.selector.started(node)
                return transport, address
        call.node = node  # the attempt's node, for middleware, though nothing reaches it
        call.tried = (*call.tried, node.id)  # a retry must look elsewhere: it stays unreachable
        raise NotDelivered(
            f"node {node.id} offers none of the transports {', '.join(t.name for t in self.transports)}",
            id="microweave.client",
        )

    def _check_kind(self, call: ClientCall, node: Node) -> None:
        """Refuse a call of the wrong kind (unary to a streaming endpoint, say) before sending
        it, over a wire that does not carry the kind (gRPC's): the server would take it for the
        kind it serves, and the caller would hang or get half an answer. The node's registry
        record says each endpoint's kind; other transports leave the check to the server."""
        kinds = self._kinds.get(node.id)
        if kinds is None:
            kinds = self._kinds_of(call.service, node.id)
        expected = kinds.get(call.path)
        if expected is not None and expected is not call.kind:
            raise NotImplementedError_(
                f"{call.endpoint} is {_KIND_NAMES[expected]}; called as {_KIND_NAMES[call.kind]}",
                id=call.service,
            )

    def _kinds_of(self, service: str, node_id: str) -> dict[str, Kind]:
        """Each endpoint's kind by path, from the record holding the node (remembered by node
        id: a node's endpoints are fixed for its life)."""
        for record in self.cache.fresh(service) or ():
            if not any(n.id == node_id for n in record.nodes):
                continue
            kinds: dict[str, Kind] = {}
            for endpoint in record.endpoints:
                stream = endpoint.metadata.get("stream", "unary")
                if stream in _KINDS:  # go-micro says "true", which names no kind: not checked
                    path = endpoint.metadata.get("path") or grpc_path(service, endpoint.name)
                    kinds[path] = _KINDS[stream]
            if len(self._kinds) >= 4096:  # nodes come and go: a bound, not a leak
                self._kinds.clear()
            self._kinds[node_id] = kinds
            return kinds
        return {}

    def _records(self, call: ClientCall) -> list[Any]:
        records = self.cache.fresh(call.service) or []
        for keep in call.filters:
            records = keep(records)
        return records

    def has_untried_node(self, call: ClientCall) -> bool:
        if not self.transports[0].discovers:
            return True
        return any(n.id not in call.tried for r in self._records(call) for n in r.nodes)

    def is_idempotent(self, call: ClientCall) -> bool:
        """The call says so, or the endpoint was declared `@idempotent` (its registry record)."""
        if call.idempotent is not None:
            return call.idempotent
        for record in self._records(call):
            for endpoint in record.endpoints:
                path = endpoint.metadata.get("path") or grpc_path(call.service, endpoint.name)
                if endpoint.name == call.endpoint or path == call.path:
                    return bool(endpoint.metadata.get("idempotent") == "true")
        return False

    # -- building a call ---------------------------------------------------------------------

    def path(self, service: str, endpoint: str) -> str:
        """The gRPC path of an endpoint: as given, as learnt from the registry, or go-micro's
        rule (`Greeter.SayHello` of `greeter` -> `/greeter.Greeter/SayHello`)."""
        known = self._paths.get(service)
        path = known.get(endpoint) if known is not None else None
        if path is None:
            path = endpoint if endpoint[:1] == "/" else grpc_path(service, endpoint)
        return path

    def _learn_path(self, call: ClientCall, services: list[ServiceRecord]) -> None:
        """A servicer's endpoint keeps its own package (`Greeter.SayHello` of `greeter` may be
        `/helloworld.Greeter/SayHello`): its record says so. Learnt once per endpoint name.
        (Nested dicts, not a dict by (service, endpoint): no tuple to build on every call.)"""
        known = self._paths.get(call.service)
        if call.endpoint[:1] == "/" or (known is not None and call.endpoint in known):
            return
        path = call.path
        for record in services:
            for endpoint in record.endpoints:
                if endpoint.name == call.endpoint:
                    path = endpoint.metadata.get("path") or path
        if known is None:
            if len(self._paths) >= 1024:  # services are few; a bound keeps odd callers in check
                self._paths.clear()
            known = self._paths[call.service] = {}
        elif len(known) >= 1024:
            known.clear()
        known[call.endpoint] = call.path = path
