"""Scheme → backend tables, URL parsing and the one place the environment is read.

Precedence for every setting: explicit argument > URL query > environment > default.
Backends are imported lazily, so `import microweave` never pulls in a driver; third-party
backends plug in through entry points (`microweave.registries`, ...).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .broker import Broker
    from .config import Source
    from .registry import Registry

__all__ = [
    "BackendURL",
    "Settings",
    "config_urls",
    "environ",
    "load_broker",
    "load_config_source",
    "load_registry",
    "parse_url",
    "settings",
]

# scheme -> (module, class, pip extra or None)
REGISTRIES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("microweave.registry.memory", "MemoryRegistry", None),
    "local": ("microweave.registry.local", "LocalRegistry", None),
    "etcd": ("microweave.registry.etcd", "EtcdRegistry", "etcd"),
    "consul": ("microweave.registry.consul", "ConsulRegistry", "consul"),
    "nats": ("microweave.registry.nats", "NatsRegistry", "nats"),
    "mdns": ("microweave.registry.mdns", "MdnsRegistry", "mdns"),
}
DEFAULT_REGISTRY = "local://"

BROKERS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("microweave.broker.memory", "MemoryBroker", None),
    "direct": ("microweave.broker.direct", "DirectBroker", None),
    "nats": ("microweave.broker.nats", "NatsBroker", "nats"),
    "nats+jetstream": ("microweave.broker.jetstream", "JetStreamBroker", "nats"),
    "rabbitmq": ("microweave.broker.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "amqp": ("microweave.broker.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "redis": ("microweave.broker.redis", "RedisBroker", "redis"),
    "rediss": ("microweave.broker.redis", "RedisBroker", "redis"),
}
DEFAULT_BROKER = "direct://"

CONFIG_SOURCES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("microweave.config.sources.memory", "MemorySource", None),
    "env": ("microweave.config.sources.env", "EnvSource", None),
    "file": ("microweave.config.sources.file", "FileSource", None),
    "etcd": ("microweave.config.sources.etcd", "EtcdSource", "etcd"),
    "consul": ("microweave.config.sources.consul", "ConsulSource", "consul"),
}


@dataclass(frozen=True)
class BackendURL:
    scheme: str
    hosts: list[str]
    path: str
    query: dict[str, str] = field(default_factory=dict)


def parse_url(url: str) -> BackendURL:
    """`etcd://h1:2379,h2:2379/micro?ttl=15` → scheme, hosts, path, query."""
    if "://" not in url:
        raise ConfigurationError(f"{url!r} is not a backend URL; write it as scheme://address")
    parts = urlsplit(url)
    hosts = [h for h in parts.netloc.split(",") if h]
    return BackendURL(parts.scheme.lower(), hosts, parts.path, dict(parse_qsl(parts.query)))


@dataclass(frozen=True)
class Settings:
    """What the environment says, read once (go-micro's MICRO_* names)."""

    registry: str | None
    registry_address: str | None
    server_address: str | None
    tcp_address: str | None
    config: str | None = None
    broker: str | None = None
    broker_address: str | None = None
    #: the node's admin HTTP endpoint (/metrics, /health): host:port, or "off"
    admin_address: str | None = None
    log_level: str | None = None  # DEBUG, INFO, ... (MICRO_LOG_LEVEL)
    log_format: str | None = None  # text | json (MICRO_LOG_FORMAT)
    access_log: str | None = None  # a true value turns the access log on (MICRO_ACCESS_LOG)
    #: the host callers dial instead of the bound one (a pod IP, a published address)
    advertise_address: str | None = None
    grace: str | None = None  # seconds a drain lets in-flight calls finish (MICRO_GRACE)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            registry=env.get("MICRO_REGISTRY") or None,
            registry_address=env.get("MICRO_REGISTRY_ADDRESS") or None,
            server_address=env.get("MICRO_SERVER_ADDRESS") or None,
            tcp_address=env.get("MICRO_TCP_ADDRESS") or None,
            config=env.get("MICRO_CONFIG") or None,
            broker=env.get("MICRO_BROKER") or None,
            broker_address=env.get("MICRO_BROKER_ADDRESS") or None,
            admin_address=env.get("MICRO_ADMIN_ADDRESS") or None,
            log_level=env.get("MICRO_LOG_LEVEL") or None,
            log_format=env.get("MICRO_LOG_FORMAT") or None,
            access_log=env.get("MICRO_ACCESS_LOG") or None,
            advertise_address=env.get("MICRO_ADVERTISE_ADDRESS") or None,
            grace=env.get("MICRO_GRACE") or None,
        )


def settings() -> Settings:
    # Read on each use, not at import: tests and `microweave run` set the environment late.
    return Settings.from_env()


def environ() -> Mapping[str, str]:
    """The process environment, for what reads it by design: the `env://` config source and
    `${VAR:default}` interpolation."""
    return os.environ


def _table(group: str, builtin: dict[str, tuple[str, str, str | None]]) -> dict[str, Any]:
    table: dict[str, Any] = dict(builtin)
    for ep in entry_points(group=group):
        table.setdefault(ep.name, ep)
    return table


def _load(kind: str, group: str, builtin: dict[str, tuple[str, str, str | None]], scheme: str) -> Any:
    table = _table(group, builtin)
    entry = table.get(scheme)
    if entry is None:
        known = ", ".join(f"{s}://" for s in sorted(table))
        raise ConfigurationError(f"unknown {kind} scheme {scheme!r}; known: {known}")
    if not isinstance(entry, tuple):
        return entry.load()
    module, name, extra = entry
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        if extra is None or (exc.name or "").partition(".")[0] == "microweave":
            raise  # our own module is broken or missing: not a driver to install
        raise ConfigurationError(
            f"the {scheme} {kind} needs a driver that is not installed ({exc.name}); "
            f'run: pip install "microweave[{extra}]" (from a checkout: '
            f'.venv/bin/pip install -e ".[{extra}]"; an image from microweave\'s Dockerfile: '
            f"build it with --build-arg EXTRAS={extra})"
        ) from None


def _build(
    kind: str, group: str, table: dict[str, tuple[str, str, str | None]], url: str, kwargs: dict[str, Any]
) -> Any:
    parsed = parse_url(url)
    return _load(kind, group, table, parsed.scheme).from_url(parsed, **kwargs)


def _env_url(kind: str, address: str | None) -> str:
    """MICRO_X (a URL, or go-micro style a scheme: `etcd`) and MICRO_X_ADDRESS (host:port
    list, or a whole URL as go-micro's RabbitMQ broker takes: `amqp://user:pw@host:5672/`)."""
    url = kind if "://" in kind else f"{kind}://"
    if address and url.endswith("://"):
        if "://" in address:
            # the address is a URL of its own: keep its credentials, path and options, under
            # the scheme MICRO_X chose (rabbitmq + amqp://... stays the RabbitMQ broker)
            return url + address.split("://", 1)[1]
        url += address
    return url


def load_registry(url: str | None = None, **kwargs: Any) -> Registry:
    """Build a registry from a URL, else MICRO_REGISTRY(+_ADDRESS), else the default."""
    if url is None:
        env = settings()
        url = _env_url(env.registry or DEFAULT_REGISTRY, env.registry_address)
    registry: Registry = _build("registry", "microweave.registries", REGISTRIES, url, kwargs)
    return registry


def load_broker(url: str | None = None, **kwargs: Any) -> Broker:
    """Build a broker from a URL, else MICRO_BROKER(+_ADDRESS), else `direct://` (no server)."""
    if url is None:
        env = settings()
        url = _env_url(env.broker or DEFAULT_BROKER, env.broker_address)
    broker: Broker = _build("broker", "microweave.brokers", BROKERS, url, kwargs)
    return broker


def config_urls(text: str) -> list[str]:
    """MICRO_CONFIG's source URLs: separated by whitespace or ';' (',' separates etcd hosts)."""
    return [u for u in re.split(r"[\s;]+", text) if u]


def load_config_source(url: str, **kwargs: Any) -> Source:
    """Build a config source from its URL (`file://settings.yaml`, `env://APP_`, `etcd://...`)."""
    parsed = parse_url(url)
    cls = _load("config source", "microweave.config_sources", CONFIG_SOURCES, parsed.scheme)
    source: Source = cls.from_url(parsed, **kwargs)
    return source
