"""A `rabbitmq://` URL read into options, and the same URL without its credentials.

    rabbitmq://user:password@host:5672/vhost?exchange=micro&retry_time=5

`amqp://` is the same backend. The password (and the user) live only in the URL handed to
aio-pika; everything that may be shown (errors, logs, repr) uses `public`, which has no
userinfo at all.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote, unquote, urlsplit

from ...errors import ConfigurationError
from ...registry.url_options import typed_options

if TYPE_CHECKING:
    from ..._backends import BackendURL

__all__ = ["DEFAULT_ADDRESS", "Options", "from_backend_url", "split_url"]

#: go-micro's default RabbitMQ address (and the broker's own default account, local only)
DEFAULT_ADDRESS: Final = "guest:guest@127.0.0.1:5672"

Unroutable = Literal["warn", "error"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    #: the topic exchange events go through; go-micro's is `micro` (topic, not durable)
    exchange: str = "micro"
    #: seconds `connect()` and a publish keep retrying an unreachable broker before BrokerError
    retry_time: float = 5.0
    #: seconds one connection attempt may take (TCP + AMQP handshake)
    connect_timeout: float = 5.0
    #: seconds a publish waits for the broker's confirm once the message is sent
    confirm_timeout: float = 30.0
    #: seconds between reconnection attempts of an established connection (for ever)
    reconnect_interval: float = 1.0
    #: a published event no queue is bound to: "warn" logs it (rate-limited) and returns,
    #: "error" raises BrokerError
    unroutable: Unroutable = "warn"
    #: x-delivery-limit of the queue-group queues: RabbitMQ itself dead-letters an event
    #: returned this many times (a safety net above max_deliveries; must be the same
    #: everywhere, since RabbitMQ refuses a queue declared with another value)
    delivery_limit: int = 50
    #: longest wait of `nack(requeue=True, delay=...)` (the event holds its slot meanwhile)
    max_requeue_delay: float = 30.0
    #: AMQP heartbeat in seconds (0: the broker's choice)
    heartbeat: int = 0

    def __post_init__(self) -> None:
        for name in ("retry_time", "connect_timeout", "confirm_timeout", "reconnect_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
        if not (math.isfinite(self.max_requeue_delay) and self.max_requeue_delay >= 0):
            raise ConfigurationError(f"max_requeue_delay must be >= 0, not {self.max_requeue_delay!r}")
        if self.unroutable not in ("warn", "error"):
            raise ConfigurationError(f"unroutable must be 'warn' or 'error', not {self.unroutable!r}")
        if not 1 <= self.delivery_limit <= 10_000:
            raise ConfigurationError(f"delivery_limit must be between 1 and 10000, not {self.delivery_limit}")
        if not self.exchange or len(self.exchange) > 255 or self.exchange.startswith("amq."):
            raise ConfigurationError(f"exchange {self.exchange!r} must have 1-255 characters, not start amq.")
        if self.heartbeat < 0:
            raise ConfigurationError(f"heartbeat must be >= 0, not {self.heartbeat}")


#: what a URL's query may set, with its type (broker keyword arguments win over the query)
_TYPES: Final[dict[str, type]] = {
    "max_deliveries": int,
    "exchange": str,
    "retry_time": float,
    "connect_timeout": float,
    "confirm_timeout": float,
    "reconnect_interval": float,
    "unroutable": str,
    "delivery_limit": int,
    "max_requeue_delay": float,
    "heartbeat": int,
}


def split_url(url: str) -> tuple[str, str]:
    """(the AMQP URL aio-pika connects to, the same without user and password)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("rabbitmq", "amqp"):
        raise ConfigurationError(f"a RabbitMQ URL starts with rabbitmq:// or amqp://, not {parts.scheme}://")
    netloc = parts.netloc or DEFAULT_ADDRESS
    if "," in netloc:
        raise ConfigurationError("a RabbitMQ URL names one broker (put a load balancer before a cluster)")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        userinfo, hostport = "guest:guest", netloc
    host, _, port = hostport.rpartition(":")
    if not port.isdigit():
        host, port = hostport, ""
    host = host or "127.0.0.1"
    port = port or "5672"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    path = "/" + quote(vhost, safe="")
    shown = "/" if vhost == "/" else path  # the default virtual host, as people write it
    return f"amqp://{userinfo}@{host}:{port}{path}", f"amqp://{host}:{port}{shown}"


def from_backend_url(url: BackendURL, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the URL as a string, the broker's keyword arguments completed from its query)."""
    text = f"{url.scheme}://{','.join(url.hosts)}{url.path}"
    _, public = split_url(text)
    return text, typed_options(public, url.query, kwargs, _TYPES)
