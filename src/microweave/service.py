"""Service: the handlers, the transports that serve them, and the registry entry that finds them.

A service is an ordered list of components (`lifecycle`): started in order, stopped in reverse.
`start()` listens, then registers the node and heartbeats within the TTL; `stop()` deregisters
first (callers stop picking this node), keeps serving for `drain_delay` while their caches catch
up, then refuses new calls and lets in-flight ones finish for up to `grace` seconds; calls still
running then are cancelled, and their callers told so. `run()` does all that under
SIGTERM/SIGINT handling and returns when the service has stopped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._backends import config_urls, load_registry, settings
from .admin import AdminServer, CheckFunction, Readiness, admin_bind
from .broker import DEFAULT_MAX_IN_FLIGHT, Broker
from .broker.subscriber import describe_subscriber
from .client import Client
from .codec import describe
from .config import Config, Source
from .errors import ConfigurationError, MicroError
from .lifecycle import Component, Grace, Listeners, Registration, Subscriptions
from .registry import Endpoint, Node, Registry, Value
from .registry import Service as ServiceRecord
from .server import Kind, Router
from .server.pipeline import Pipeline
from .server.threads import DEFAULT_THREADS, WorkerThreads
from .transport import ServerTransport, advertise_host, advertised

if TYPE_CHECKING:
    from .broker import AckMode
    from .middleware import ServerMiddleware

__all__ = ["Service"]

log = logging.getLogger("microweave.service")
H = TypeVar("H")
C = TypeVar("C", bound=CheckFunction)

DEFAULT_TTL = 15.0
#: seconds a drain lets in-flight calls finish, unless grace= or MICRO_GRACE say otherwise
DEFAULT_GRACE = 10.0


def _split_address(address: str, what: str = "address") -> tuple[str, int]:
    """host, port of `address`; `what` names the setting it came from, for the error."""
    host, sep, port = address.rpartition(":")
    # a port above 65535 is no error to getaddrinfo: it would listen on the port modulo 65536
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(
            f"{what} {address!r} must be host:port with a port from 0 to 65535 (0 picks a free one)"
        )
    return host or "0.0.0.0", int(port)


def _grace_setting() -> float:
    text = settings().grace
    if text is None:
        return DEFAULT_GRACE
    try:
        grace = float(text)
    except ValueError:
        grace = -1.0
    if not 0 <= grace < float("inf"):
        raise ConfigurationError(f"MICRO_GRACE {text!r} must be a number of seconds (0 or more), e.g. 10")
    return grace


def _checked_grace(grace: float) -> float:
    # a negative or NaN grace cancelled every in-flight call at once (inf: wait for them all)
    if not grace >= 0:
        raise ConfigurationError(f"grace={grace!r} must be a number of seconds (0 or more), e.g. 10")
    return float(grace)


def _value(data: dict[str, Any] | None) -> Value | None:
    if data is None:
        return None
    values = data.get("values")
    return Value(data["name"], data["type"], [v for d in values if (v := _value(d))] if values else None)


def _servicer_types(path: str, handler: Any) -> tuple[Any, Any]:
    """A servicer method's message classes, for its registry record.

    The request deserializer is a bound `FromString`, but the response serializer is the
    unbound `SerializeToString` (it names no class), so ask the generated code's descriptors.
    """
    request = getattr(handler.request_deserializer, "__self__", None)
    response = getattr(handler.response_serializer, "__self__", None)
    if response is None:
        from google.protobuf import descriptor_pool, message_factory

        service, _, method = path[1:].partition("/")
        try:
            found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
        except KeyError:
            return request, None
        response = message_factory.GetMessageClass(found.output_type)
    return request, response


class Service:
    def __init__(
        self,
        name: str,
        *,
        version: str = "latest",
        metadata: dict[str, str] | None = None,
        registry: Registry | str | None = None,
        address: str | None = None,
        tcp_address: str | Literal[False] | None = None,
        ttl: float = DEFAULT_TTL,
        grace: float | None = None,
        drain_delay: float = 0.5,
        max_message: int = 4 * 1024 * 1024,
        middleware: Sequence[ServerMiddleware] = (),
        threads: int = DEFAULT_THREADS,
        transports: Sequence[ServerTransport] | None = None,
        config: Config | Sequence[str | Source] | str | None = None,
        broker: Broker | str | None = None,
        metrics: bool = True,
        admin_address: str | Literal[False] | None = None,
        advertise_address: str | None = None,
    ) -> None:
        """`middleware` wraps every call this node serves, first outermost; `threads` sizes the
        pool that runs sync handlers (a deadline cannot stop a thread: size it for the slowest
        calls you expect at once); `transports` replaces the default gRPC + tcp listeners
        (each listens on its own `address`, or on this service's address for its kind).
        `config` is a `Config` or its sources (URLs or `Source`s, later wins); without it,
        MICRO_CONFIG's URLs, else `env://<NAME>_` (greeter reads GREETER_DB__PORT as db.port).
        Handlers read it as `ctx.config`; it is read before the node listens. `broker` carries
        its subscribers' events and `client.publish` (a URL, else MICRO_BROKER, else
        `direct://`: no server, events go over the transports to subscribers found in the
        registry). `admin_address` serves /metrics and /health (host:port; default
        MICRO_ADMIN_ADDRESS, else a free port on this service's host; False or "off": none).
        `advertise_address` is the host callers dial instead of the bound one (default
        MICRO_ADVERTISE_ADDRESS; in Kubernetes the pod IP); `grace` defaults to MICRO_GRACE,
        else 10 seconds."""
        if not name or any(c in name for c in "/ "):
            raise ConfigurationError(f"service name {name!r} must be non-empty, without '/' or spaces")
        self.name = name
        self.version = version
        # str(): a value that is not text (a Secret: masked) never reaches the registry as itself
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.address = address or settings().server_address or "127.0.0.1:0"
        _split_address(self.address, "the address (address= / MICRO_SERVER_ADDRESS)")
        # microweave's own transport listens beside gRPC: on the same host, a free port, unless
        # given an address of its own, or turned off with `tcp_address=False`
        self.tcp_address: str | None = (
            None
            if tcp_address is False
            else tcp_address or settings().tcp_address or f"{_split_address(self.address)[0]}:0"
        )
        if self.tcp_address:
            _split_address(self.tcp_address, "the tcp address (tcp_address= / MICRO_TCP_ADDRESS)")
        self._admin_bind = admin_bind(
            admin_address, settings().admin_address, _split_address(self.address)[0]
        )
        if self._admin_bind:
            _split_address(self._admin_bind, "the admin address (admin_address= / MICRO_ADMIN_ADDRESS)")
        self._admin: AdminServer | None = None
        self.ttl = ttl
        self.grace = _grace_setting() if grace is None else _checked_grace(grace)
        #: the host advertised for every listener instead of the bound one (None: the bound
        #: host, or this host's routable address for 0.0.0.0)
        self.advertise_address: str | None = None
        advertise = advertise_address or settings().advertise_address
        if advertise:
            what = "advertise_address=" if advertise_address else "MICRO_ADVERTISE_ADDRESS"
            self.advertise_address = advertise_host(advertise, what)
        self.drain_delay = drain_delay
        self.max_message = max_message  # per message, both transports (gRPC's default, 4 MiB)
        self.node_id = f"{name}-{uuid.uuid4()}"
        #: readiness and health checks: /health/ready and grpc.health.v1 report it
        self.health = Readiness(name, version=version, node_id=self.node_id)
        self._registry_arg = registry
        self._registry: Registry | None = registry if isinstance(registry, Registry) else None
        self.router = Router(package=name)
        self.middleware = list(middleware)
        self.metrics = metrics  # Prometheus metrics of its calls (and its client's)
        self.threads = threads
        self._transports = list(transports) if transports is not None else None
        self.transports: list[ServerTransport] = []
        self.addresses: dict[str, str] = {}
        self.components: list[Component] = []
        self.pipeline: Pipeline | None = None
        self._client: Client | None = None
        self._owns_client = True
        self._stop_lock = asyncio.Lock()
        self.running = False
        self._config_arg = config
        self._config: Config | None = config if isinstance(config, Config) else None
        self._broker_arg = broker

    # -- what it serves ---------------------------------------------------------------

    def handler(self, handler: H | None = None, *, name: str | None = None) -> Any:
        """Serve a handler class (or instance): `@service.handler` or `@service.handler(name=...)`."""

        def add(target: H) -> H:
            self.router.add_handler(target, name=name)
            return target

        return add if handler is None else add(handler)

    def subscriber(
        self,
        topic: str,
        *,
        queue: str | None = None,
        ack: AckMode = "auto",
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        name: str | None = None,
    ) -> Callable[[H], H]:
        """Run the decorated function for each event on `topic` (one node of each `queue` group
        gets it; without a queue, every node does): `@service.subscriber("user.created",
        queue="mailer")`. Its first parameter's type decodes the payload; an optional second one
        gets the `MessageContext`. `ack="manual"`: it calls `ctx.ack()` / `ctx.nack()` itself."""

        def add(fn: H) -> H:
            subscriber = describe_subscriber(
                fn,  # type: ignore[arg-type]
                package=self.name, topic=topic, queue=queue, ack=ack, max_in_flight=max_in_flight, name=name,
            )  # fmt: skip
            self.router.add_subscriber(subscriber)
            return fn

        return add

    def add_servicer(self, servicer: object, add_to_server: Callable[[Any, Any], None]) -> None:
        """Serve a grpcio-generated servicer: `service.add_servicer(S(), add_SServicer_to_server)`."""
        self.router.add_servicer(servicer, add_to_server)

    def add_health_check(
        self,
        name: str,
        check: CheckFunction,
        *,
        critical: bool = True,
        timeout: float = 5.0,
        interval: float = 10.0,
    ) -> None:
        """Run `check()` (sync or async; raising or returning False is failing) every `interval`
        seconds, cut off after `timeout`: a failing critical check makes the node not ready
        (/health/ready, gRPC health); every check shows in /health."""
        self.health.add_check(name, check, critical=critical, timeout=timeout, interval=interval)

    def health_check(
        self, name: str, *, critical: bool = True, timeout: float = 5.0, interval: float = 10.0
    ) -> Callable[[C], C]:
        """`add_health_check` as a decorator: `@service.health_check("database")`."""

        def add(check: C) -> C:
            self.add_health_check(name, check, critical=critical, timeout=timeout, interval=interval)
            return check

        return add

    # -- collaborators ----------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            arg = self._registry_arg
            self._registry = load_registry(arg if isinstance(arg, str) else None)
        return self._registry

    @registry.setter
    def registry(self, registry: Registry | str) -> None:
        """Swap the registry before start (e.g. `microweave run --registry`); a URL loads lazily."""
        if self.running:
            raise ConfigurationError(f"cannot change the registry of {self.name} while it is running")
        self._registry_arg = registry
        self._registry = registry if isinstance(registry, Registry) else None
        self._client, self._owns_client = None, True  # it was bound to the old registry

    def _advertised(self, bound: str) -> str:
        return advertised(bound, self.advertise_address)

    @property
    def admin_address(self) -> str | None:
        """Where this node's admin endpoint (/metrics, /health) answers: the advertised
        host:port once started; None before, or when it is off."""
        return self._admin.address if self._admin is not None else None

    @property
    def broker(self) -> Broker:
        """Where this service's subscribers listen and its client publishes (its client's
        broker, built on first use)."""
        return self.client.broker

    @property
    def config(self) -> Config:
        """This service's live configuration (built on first use from the `config` argument)."""
        if self._config is None:
            arg = self._config_arg
            if isinstance(arg, str):
                arg = config_urls(arg)
            elif arg is None:
                env = settings().config
                prefix = "".join(c if c.isalnum() else "_" for c in self.name.upper()) + "_"
                arg = config_urls(env) if env else [f"env://{prefix}"]
            self._config = Config(list(arg))  # type: ignore[arg-type]
        return self._config

    @property
    def client(self) -> Client:
        """A client that shares this service's registry and names it as the caller."""
        if self._client is None:
            self._client = Client(
                registry=self.registry,
                name=self.name,
                node_id=self.node_id,
                broker=self._broker_arg,
                metrics=self.metrics,
            )
        return self._client

    @client.setter
    def client(self, client: Client) -> None:
        """Give handlers a client of your own (other transports, middleware, retries); you
        built it, so you close it."""
        self._client = client
        self._owns_client = False

    def record(self) -> ServiceRecord:
        """This node as a go-micro registry record."""
        endpoints = [
            Endpoint(
                name=m.name,
                request=_value(describe(m.request_type)),
                response=_value(describe(m.response_type)),
                metadata=dict(m.metadata),
            )
            for m in self.router.by_name.values()
        ]
        for subscriber in self.router.subscribers.values():
            endpoints.append(
                Endpoint(
                    name=subscriber.name,
                    request=_value(describe(subscriber.payload_type)),
                    metadata=subscriber.metadata,
                )
            )
        for path, handler in self.router.servicer_handlers.items():
            service, _, method = path[1:].partition("/")
            request, response = _servicer_types(path, handler)
            kind = Kind.of(handler.request_streaming, handler.response_streaming)
            endpoints.append(
                Endpoint(
                    name=f"{service.rpartition('.')[2]}.{method}",
                    request=_value(describe(request)),
                    response=_value(describe(response)),
                    # same `stream` key as typed endpoints, so callers know how to call it
                    metadata={"path": path, **({"stream": kind.value} if kind is not Kind.UNARY else {})},
                )
            )
        metadata = {
            "protocol": "grpc",
            "transport": "grpc",
            "server": "grpc",
            "registry": self.registry.scheme,
            # go-micro reads `address` (gRPC); our faster transports advertise here
            **{f"{k}_address": v for k, v in self.addresses.items() if k != "grpc"},
            **({"admin_address": self.admin_address} if self.admin_address else {}),
            # go-micro's key: the broker carrying its subscribers' events (direct:// calls only
            # the nodes that say "direct")
            **({"broker": self.broker.scheme} if self.router.subscribers else {}),
            **self.metadata,
        }
        node = Node(id=self.node_id, address=self.addresses.get("grpc", ""), metadata=metadata)
        return ServiceRecord(
            name=self.name, version=self.version, metadata={}, endpoints=endpoints, nodes=[node]
        )

    # -- lifecycle --------------------------------------------------------------------

    def _listeners(self) -> list[tuple[ServerTransport, str]]:
        from .transport.grpc import GrpcServer
        from .transport.tcp import TcpServer

        if self._transports is not None:
            by_kind = {"grpc": self.address, "tcp": self.tcp_address}
            out = []
            for transport in self._transports:
                address = transport.address or by_kind.get(transport.name) or "127.0.0.1:0"
                _split_address(address)
                out.append((transport, address))
            return out
        listeners: list[tuple[ServerTransport, str]] = [
            (GrpcServer(max_message=self.max_message), self.address)
        ]
        if self.tcp_address:
            listeners.append((TcpServer(max_frame_size=self.max_message), self.tcp_address))
        return listeners

    async def start(self) -> None:
        if self.running:
            return
        from .metrics import watch_pipeline
        from .middleware.defaults import server_middleware

        middleware = [*server_middleware(self.name, metrics=self.metrics), *self.middleware]
        if self.registry.counts_calls:  # it reports them (NATS: $SRV.STATS)
            from .server import stats

            middleware = [stats.track(self.node_id), *middleware]
        self.pipeline = Pipeline(
            self.router,
            middleware=middleware,
            max_message=self.max_message,
            threads=WorkerThreads(self.threads, name=f"{self.name}-worker"),
            config=self.config,
        )
        if self.metrics:  # micro_server_in_flight: its running calls, read at scrape time
            watch_pipeline(self.pipeline)
        # one grace for the whole drain: event handlers first, then calls, get what is left
        grace = Grace(self.grace)
        listening = Listeners(
            self.pipeline, self._listeners(), node_id=self.node_id, grace=grace,
            advertise=self._advertised,
        )  # fmt: skip
        self.transports = [t for t, _ in listening.listeners]
        self.addresses = listening.addresses
        subscribers = list(self.router.subscribers.values())
        registration = Registration(self.registry, self.record, ttl=self.ttl, drain_delay=self.drain_delay)
        admin = None
        if self._admin_bind:
            admin = AdminServer(self.health, self._admin_bind, advertise=self._advertised)
        self._admin = admin
        self.components = [
            # first: /health/live answers while the rest starts; stopped last
            _Health(self, registration),
            *([admin] if admin else []),
            _Configured(self.config, owned=not isinstance(self._config_arg, Config)),
            listening,
            Subscriptions(lambda: self.broker, self.pipeline, subscribers, grace=grace),
            registration,
        ]
        started: list[Component] = []
        try:
            for component in self.components:
                await component.start()
                started.append(component)
        except BaseException:
            for component in reversed(started):
                await component.stop()
            await self._release()  # a failed start owns nothing afterwards either
            raise
        self.running = True
        self.health.serving()
        await self.health.settled()  # gRPC health says SERVING once start() returns
        log.info(
            "%s %s serving %s on %s (node %s, registry %r%s)",
            self.name,
            self.version,
            ", ".join([*self.router.by_name, *self.router.servicer_names(), *self._topics()]) or "nothing",
            ", ".join(f"{k} {v}" for k, v in [*self.addresses.items(), ("admin", self.admin_address)] if v),
            self.node_id,
            self.registry,
            f", broker {self.broker!r}" if self.router.subscribers else "",
        )

    def _topics(self) -> list[str]:
        return [f"events on {s.topic}" for s in self.router.subscribers.values()]

    async def stop(self) -> None:
        async with self._stop_lock:
            if not self.running:
                return
            self.running = False
            # not ready from the first moment, before the node leaves the registry
            self.health.draining()
            await self.health.settled()
            for component in reversed(self.components):
                try:
                    await component.stop()
                except Exception:
                    log.exception("stopping %s of %s failed", type(component).__name__, self.name)
            self.components = []
            await self._release()
            from .middleware.otel_setup import flush_traces  # the node's last spans go out now

            await flush_traces()
            log.info("%s stopped (node %s)", self.name, self.node_id)

    async def _release(self) -> None:
        """Close what this service built for itself: its client and a registry from a URL."""
        from .logs import unbind_node

        unbind_node(self.node_id)  # a stopped node's object may live on: the log no longer names it
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
        if not isinstance(self._registry_arg, Registry) and self._registry is not None:
            await self._registry.aclose()  # built here from a URL: closed here
            self._registry = None

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve(self) -> None:
        """Start, wait for SIGTERM or SIGINT, stop gracefully. A second signal while stopping
        does not cut the drain short (callers of in-flight calls are still answered): it is
        logged; SIGKILL stops the process at once."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def on_signal() -> None:
            if stopping.is_set():
                log.warning(
                    "%s is already stopping (grace %gs); send SIGKILL to stop it at once",
                    self.name,
                    self.grace,
                )
            stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            await self.start()
            _freeze_startup_heap()
            await stopping.wait()
            log.info("%s: signal received, draining", self.name)
        finally:
            try:
                await self.stop()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (blocking); uses uvloop when it is installed. A setup
        error (bad configuration, a registry or config source it cannot use) ends the process
        with its message and exit code 2, not a traceback."""
        try:
            if not logging.getLogger().handlers:  # a user who configured logging keeps theirs
                from . import logs

                logs.configure()  # MICRO_LOG_LEVEL, MICRO_LOG_FORMAT
            run_async(self.serve())
        except MicroError as exc:  # a bad MICRO_LOG_*, or from start(): stop() logs what it meets
            log.error("%s cannot start: %s", self.name, exc.detail)
            raise SystemExit(2) from None


class _Health:
    """The service's readiness for one run: starting until `start()` completes (the service
    then says serving), following this run's registration, telling its gRPC servers; stopped
    (not alive) when everything else has stopped."""

    def __init__(self, service: Service, registration: Registration) -> None:
        self.service = service
        self.registration = registration
        self._unwatch: list[Callable[[], None]] = []

    async def start(self) -> None:
        health = self.service.health
        await health.start()
        health.follow(self.registration)
        for transport in self.service.transports:
            report = getattr(transport, "set_serving", None)  # the gRPC server's health service
            if report is not None:
                self._unwatch.append(health.watch(report))
        await health.settled()

    async def stop(self) -> None:
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch = []
        await self.service.health.stop()


class _Configured:
    """The service's config as a component: read first (handlers and the registry record may
    depend on it), stopped last. A `Config` the user passed in and started is left running."""

    def __init__(self, config: Config, *, owned: bool) -> None:
        self.config = config
        self.owned = owned
        self._started_here = False

    async def start(self) -> None:
        if not self.config.started:
            await self.config.start()
            self._started_here = True

    async def stop(self) -> None:
        if self.owned or self._started_here:
            await self.config.stop()


def _freeze_startup_heap() -> None:
    """Everything imported and built to start the service lives as long as the process: move it
    out of the garbage collector's sight, so each full collection no longer walks it. A serving
    process allocates per call; without this, collections triggered by that churn rescan the
    whole startup heap (measured: ~25 -> ~19 us of server CPU per tcp call). Only `serve()` and
    `run()` do it: they own the process; `async with service` leaves the collector alone."""
    gc.collect()
    gc.freeze()


def run_async(main: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
