"""The one error tree of microweave, and its wire form.

    MicroError                      code, detail, id, status — go-micro's error shape
    ├── BadRequest                  400  INVALID_ARGUMENT   a body that does not decode, bad input
    ├── Unauthorized                401  UNAUTHENTICATED
    ├── Forbidden                   403  PERMISSION_DENIED
    ├── NotFound                    404  NOT_FOUND
    │   └── ServiceNotFound              no node of that service in the registry
    ├── Timeout                     408  DEADLINE_EXCEEDED  the deadline passed
    ├── Conflict                    409  ALREADY_EXISTS
    ├── PreconditionFailed          412  FAILED_PRECONDITION
    ├── TooManyRequests             429  RESOURCE_EXHAUSTED a limit was hit (size, rate)
    ├── Cancelled                   499  CANCELLED
    ├── InternalServerError         500  INTERNAL           a handler raised; has a correlation id
    ├── NotImplementedError_        501  UNIMPLEMENTED      unknown endpoint
    ├── Unavailable                 503  UNAVAILABLE        the node or a dependency cannot serve now
    │   ├── NotDelivered                 the request never reached a handler: safe to retry elsewhere
    │   └── ConnectionLost               the connection broke mid-call: the handler may have run
    ├── RegistryError               503                     registry unreadable or unwritable
    ├── BrokerError                 503                     broker unreachable, a publish not confirmed
    └── ConfigurationError          (local only)           bad URL, unknown scheme, missing driver

A remote error reaches the caller as the subclass its code maps to, with the remote `id` (the
service that raised it) and `detail`, and `remote` set. Where an error came from decides what
the client may do about it, as httpx's `TransportError` versus `HTTPStatusError`:

- `NotDelivered`: refused, draining, connect failure, stream refused. The handler never ran, so
  the client retries on another node and ejects the node that failed.
- `ConnectionLost`: the request left but no answer came. The handler may have run: retried only
  for endpoints declared idempotent.
- anything with `remote=True`: the node answered. Never ejects a node; retried only when the
  endpoint is idempotent and the error is transient (`Unavailable`).

go-micro carries the error as JSON in the gRPC status message; we do the same, so go-micro
clients and plain grpcio clients both read it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import grpc

__all__ = [
    "BadRequest",
    "BrokerError",
    "Cancelled",
    "ConfigurationError",
    "Conflict",
    "ConnectionLost",
    "Forbidden",
    "InternalServerError",
    "MicroError",
    "NotDelivered",
    "NotFound",
    "NotImplementedError_",
    "PreconditionFailed",
    "RegistryError",
    "ServiceNotFound",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "code_of",
    "error_for_code",
    "from_grpc",
    "from_wire",
    "grpc_to_code",
]


class MicroError(Exception):
    """Base of every microweave error; `code` is an HTTP-style number as in go-micro."""

    default_code: ClassVar[int] = 500

    def __init__(self, detail: str = "", *, id: str = "", code: int | None = None) -> None:
        self.detail = detail
        self.id = id
        self.code = self.default_code if code is None else code
        #: True when a remote node answered with this error (set by the client)
        self.remote = False
        #: the service a client was calling when this error came back ("" when raised locally)
        self.callee = ""
        super().__init__(detail)

    @property
    def status(self) -> str:
        return _STATUS_TEXT.get(self.code, "Unknown")

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return _CODE_TO_GRPC.get(self.code, grpc.StatusCode.UNKNOWN)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "detail": self.detail, "status": self.status}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def __str__(self) -> str:
        where = f"{self.id}: " if self.id else ""
        return f"{where}{self.detail} ({self.code} {self.status})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(detail={self.detail!r}, id={self.id!r}, code={self.code})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.detail, self.id, self.code))


def _rebuild(cls: type[MicroError], detail: str, id: str, code: int) -> MicroError:
    return cls(detail, id=id, code=code)


class BadRequest(MicroError):
    default_code = 400


class Unauthorized(MicroError):
    default_code = 401


class Forbidden(MicroError):
    default_code = 403


class NotFound(MicroError):
    default_code = 404


class ServiceNotFound(NotFound):
    """No node of the service is registered (or none passes the selector's filters)."""


class Timeout(MicroError):
    default_code = 408


class Conflict(MicroError):
    default_code = 409


class PreconditionFailed(MicroError):
    default_code = 412


class TooManyRequests(MicroError):
    default_code = 429


class Cancelled(MicroError):
    default_code = 499


class InternalServerError(MicroError):
    default_code = 500


class NotImplementedError_(MicroError):
    default_code = 501


class Unavailable(MicroError):
    default_code = 503


class NotDelivered(Unavailable):
    """The request never reached a handler (refused, draining, unreachable): safe to retry."""


class ConnectionLost(Unavailable):
    """The connection broke after the request left: the handler may have run."""


class RegistryError(MicroError):
    default_code = 503


class BrokerError(MicroError):
    """The broker could not take a message or a subscription (down, refused, not confirmed);
    the detail names its URL without credentials."""

    default_code = 503


class ConfigurationError(MicroError):
    """A local mistake (bad URL, unknown scheme, missing driver); never crosses the wire."""

    default_code = 500


def code_of(exc: BaseException | None) -> int:
    """The code a call ended with, for metrics, spans and logs: 200 for none, a `MicroError`'s
    own code, 499 for a cancellation, 500 for anything else (the error boundary answers that)."""
    if exc is None:
        return 200
    if isinstance(exc, MicroError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return 499
    return 500


_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

_CODE_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
_GRPC_TO_CODE = {v: k for k, v in _CODE_TO_GRPC.items()}
_GRPC_TO_CODE[grpc.StatusCode.UNKNOWN] = 500
_GRPC_TO_CODE[grpc.StatusCode.DATA_LOSS] = 500
_GRPC_TO_CODE[grpc.StatusCode.ABORTED] = 409
_GRPC_TO_CODE[grpc.StatusCode.OUT_OF_RANGE] = 400

_CLASS_BY_CODE: dict[int, type[MicroError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: Timeout,
    409: Conflict,
    412: PreconditionFailed,
    429: TooManyRequests,
    499: Cancelled,
    500: InternalServerError,
    501: NotImplementedError_,
    503: Unavailable,
}


def error_for_code(code: int, detail: str, *, id: str = "") -> MicroError:
    return _CLASS_BY_CODE.get(code, MicroError)(detail, id=id, code=code)


def grpc_to_code(code: grpc.StatusCode) -> int:
    """The go-micro code for a gRPC status code (UNKNOWN and the like become 500)."""
    return _GRPC_TO_CODE.get(code, 500)


def from_wire(payload: str | bytes | dict[str, Any], *, fallback_code: int = 500) -> MicroError:
    """Rebuild an error from go-micro's JSON; text that is not that JSON becomes the detail."""
    data: Any = payload
    if not isinstance(payload, dict):
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
    if not isinstance(data, dict) or ("code" not in data and "detail" not in data):
        text = payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload)
        return error_for_code(fallback_code, text)
    code = data.get("code")
    code = code if isinstance(code, int) and code > 0 else fallback_code
    return error_for_code(code, str(data.get("detail", "")), id=str(data.get("id", "")))


def from_grpc(code: grpc.StatusCode, details: str | None) -> MicroError:
    """Map a gRPC status to our tree; the status message may hold go-micro error JSON."""
    return from_wire(details or code.name.lower(), fallback_code=grpc_to_code(code))
