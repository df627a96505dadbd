"""Transports: how a call's bytes travel between a client and a node.

A server transport only moves bytes: it turns what arrives into a `Call` and hands it to the
service's `Pipeline`, which runs every rule (limits, deadlines, errors) the same for all. A
client transport carries encoded bodies to an address and back, pooling its connections.
Bodies are already encoded (the codec belongs to the endpoint, not the wire), so every transport
carries JSON, msgpack and protobuf alike.

A client transport says where an error came from: `NotDelivered` when the request certainly
never reached a handler (refused, draining, connect failure), `ConnectionLost` when it may
have, and an error with `remote=True` when the node answered with it.
"""

from __future__ import annotations

import abc
import ipaddress
import re
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING

from ..codec import JSON
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..registry import Node
    from ..server import Kind
    from ..server.pipeline import Pipeline

__all__ = ["ClientTransport", "ServerTransport", "StreamBody", "advertise_host", "advertised"]


def advertised(address: str, host: str | None = None) -> str:
    """The address callers dial for a listener bound at `address`. `host` (the caller's
    MICRO_ADVERTISE_ADDRESS or advertise_address=) replaces the bound host: a pod IP, or the host
    a container's port is published on. Without one, an unspecified bind (0.0.0.0, ::)
    advertises this host's routable address: nobody can dial 0.0.0.0."""
    bound, port = address.rsplit(":", 1)
    if host:
        return f"{advertise_host(host)}:{port}"
    if bound in ("0.0.0.0", "::", "[::]"):
        bound = _this_host()
    return f"{bound}:{port}"


def advertise_host(value: str, what: str = "MICRO_ADVERTISE_ADDRESS") -> str:
    """`value` checked as an advertised host: an IP address or a DNS name, no port (each
    listener keeps its own); IPv6 comes back in brackets, ready for host:port."""
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # a last label of digits only is a mistyped IP (999.1.1.1, 10.0.5), never a name
        if not _HOST_NAME.fullmatch(host) or host.rstrip(".").rpartition(".")[2].isdigit():
            raise ConfigurationError(
                f"{what} {value!r} is no host: give an IP address or a DNS name without a port "
                "(each listener advertises its own port), e.g. the pod IP"
            ) from None
        return host
    if ip.is_unspecified:
        raise ConfigurationError(f"{what} {value!r}: nobody can dial an unspecified address; give a real one")
    return f"[{ip}]" if ip.version == 6 else str(ip)


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def _this_host() -> str:
    """This host's address as other hosts reach it: its name's, unless that is a loopback one
    (Debian's /etc/hosts maps the host name to 127.0.1.1), then the one the routing table
    would send from; 127.0.0.1 on a host with no network."""
    try:
        host = socket.gethostbyname(socket.gethostname())
    except OSError:
        host = ""
    if host and not host.startswith("127."):
        return host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # UDP connect only picks a route: nothing is sent
            return str(probe.getsockname()[0])
    except OSError:  # no route anywhere
        return host or "127.0.0.1"


#: one body (unary and server-streaming calls) or an async iterator of bodies (client/bidi)
StreamBody = bytes | AsyncIterator[bytes]


class ServerTransport(abc.ABC):
    """Serves a router on one listening address."""

    #: registry metadata key naming this transport (`grpc`, `tcp`)
    name: str = ""
    #: host:port to listen on; None: the service's address for this kind of transport
    address: str | None = None

    @abc.abstractmethod
    async def start(self, pipeline: Pipeline, *, host: str, port: int) -> str:
        """Listen (port 0 picks a free one) and return the address callers should use."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to `grace` seconds, then close.
        (The service cancels calls still running at its own grace; their callers are told.)"""


class ClientTransport(abc.ABC):
    """Carries calls to nodes by address, reusing connections."""

    name: str = ""
    #: False for a test double that answers every call itself: the client then selects no node
    discovers: bool = True
    #: whether the wire says if a call is unary or streaming (gRPC's does not: the client then
    #: checks the kind against the registry record before sending)
    call_kind_on_wire: bool = True

    def address_of(self, node: Node) -> str | None:
        """Where this transport reaches `node`, or None when the node does not offer it."""
        return node.metadata.get(f"{self.name}_address")

    @abc.abstractmethod
    async def unary(
        self,
        address: str,
        path: str,
        body: bytes,
        *,
        timeout: float | None,
        metadata: Mapping[str, str],
        content_type: str = JSON,
        response_metadata: dict[str, str] | None = None,
    ) -> bytes:
        """One request, one reply. Fills `response_metadata` when given."""

    @abc.abstractmethod
    def stream(
        self,
        address: str,
        path: str,
        kind: Kind,
        body: StreamBody,
        *,
        timeout: float | None,
        metadata: Mapping[str, str],
        content_type: str = JSON,
    ) -> AsyncGenerator[bytes, None]:
        """Server-, client- or bidi-streaming: yields the reply bodies."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every pooled connection."""
