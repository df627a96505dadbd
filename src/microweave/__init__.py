"""microweave: go-micro for Python.

Services that register themselves, find each other, call each other over gRPC (and microweave's
own fast transport), publish and subscribe to events and read live configuration.
"""

from .client import Client, Retry
from .client.blocking import BlockingClient
from .context import Context, current_context
from .errors import (
    BadRequest,
    Cancelled,
    ConfigurationError,
    Conflict,
    Forbidden,
    InternalServerError,
    MicroError,
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
from .registry import Registry
from .selector import Selector, by_metadata, by_version
from .service import Service

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "BlockingClient",
    "Cancelled",
    "Client",
    "ConfigurationError",
    "Conflict",
    "Context",
    "Forbidden",
    "InternalServerError",
    "MicroError",
    "NotFound",
    "NotImplementedError_",
    "PreconditionFailed",
    "Registry",
    "RegistryError",
    "Retry",
    "Selector",
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
]
