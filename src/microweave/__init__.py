"""microweave: go-micro for Python.

Services that register themselves, find each other, call each other over gRPC (and microweave's
own fast transport), publish and subscribe to events and read live configuration.
"""

from .broker import Broker, Event
from .client import UNSET, Client, ClientCall, Retry
from .client.blocking import BlockingClient
from .config import Config, Secret
from .context import BaseContext, Context, MessageContext, current_context
from .errors import (
    BadRequest,
    BrokerError,
    Cancelled,
    ConfigurationError,
    Conflict,
    ConnectionLost,
    Forbidden,
    InternalServerError,
    MicroError,
    NotDelivered,
    NotFound,
    NotImplementedError_,
    PreconditionFailed,
    RegistryError,
    ServiceNotFound,
    Timeout,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from .middleware import ClientMiddleware, ServerMiddleware
from .registry import Registry
from .selector import Selector, by_metadata, by_version
from .server.call import Call
from .server.handlers import idempotent
from .service import Service

__version__ = "0.1.0"

__all__ = [
    "UNSET",
    "BadRequest",
    "BaseContext",
    "BlockingClient",
    "Broker",
    "BrokerError",
    "Call",
    "Cancelled",
    "Client",
    "ClientCall",
    "ClientMiddleware",
    "Config",
    "ConfigurationError",
    "Conflict",
    "ConnectionLost",
    "Context",
    "Event",
    "Forbidden",
    "InternalServerError",
    "MessageContext",
    "MicroError",
    "NotDelivered",
    "NotFound",
    "NotImplementedError_",
    "PreconditionFailed",
    "Registry",
    "RegistryError",
    "Retry",
    "Secret",
    "Selector",
    "ServerMiddleware",
    "Service",
    "ServiceNotFound",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "by_metadata",
    "by_version",
    "current_context",
    "idempotent",
]
