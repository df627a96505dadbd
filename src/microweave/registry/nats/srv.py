"""The NATS micro services protocol (ADR-32): `$SRV.PING|INFO|STATS[.<name>[.<id>]]`.

Beyond go-micro: every node registered through a NatsRegistry answers these control subjects,
so `nats micro ls` / `info` / `stats` (and any other ADR-32 tool) list microweave nodes next to
NATS-native services. The answers follow the protocol's v1 JSON schemas, which the `nats` CLI
validates: `name`, `id` and endpoint names are the service name, node id and endpoint name with
every character outside `[A-Za-z0-9_-]` replaced by `_` (`Greeter.SayHello` is
`Greeter_SayHello`), and a version that is not semver becomes a `0.0.0-` pre-release; the
originals are in the metadata (`microweave.service`, `.version`, `.node`, `.endpoint`).

The endpoints are served over gRPC and microweave's tcp at the node's address, not over NATS:
an endpoint's `subject` holds its gRPC method path and `queue_group` is empty. STATS counts
calls per endpoint when the node's server records them (`microweave.server.stats`), else zeros.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

from .. import Node, Service

__all__ = [
    "INFO_TYPE",
    "PING_TYPE",
    "STATS_TYPE",
    "SUBJECT",
    "Listing",
    "answer",
    "semver",
    "token",
]

SUBJECT = "$SRV.>"
PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
_VERBS = {"PING", "INFO", "STATS"}
_NOT_A_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
# ADR-32's version pattern (the `nats` CLI validates replies against it)
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_encoder = msgspec.json.Encoder()

#: (requests, errors, last error, processing nanoseconds) of each endpoint of a node
EndpointCounts = dict[str, tuple[int, int, str, int]]


class Listing(msgspec.Struct, frozen=True):
    """One registered node as the control subjects describe it."""

    service: Service  # holding this node only
    started: datetime

    @property
    def node(self) -> Node:
        return self.service.nodes[0]


def token(text: str) -> str:
    """A name or id as one subject token (ADR-32 names: letters, digits, `-` and `_`)."""
    return _NOT_A_TOKEN.sub("_", text) or "_"


def semver(version: str) -> str:
    """The version as ADR-32 wants it (semver): as is when it is one, else a 0.0.0 pre-release
    naming it (go-micro's default `latest` is `0.0.0-latest`); the original is in metadata."""
    if _SEMVER.match(version):
        return version
    label = re.sub(r"[^0-9A-Za-z-]", "-", version)
    if not label:
        return "0.0.0"
    return f"0.0.0-{'v' + label if label.isdigit() else label}"


def answer(
    subject: str, listings: Iterable[Listing], counts: Callable[[str], EndpointCounts | None]
) -> list[bytes]:
    """The replies to one control request: one per matching node (none if the subject is not one)."""
    parts = subject.split(".")
    if len(parts) < 2 or len(parts) > 4 or parts[0] != "$SRV" or parts[1] not in _VERBS:
        return []
    verb = parts[1]
    name = parts[2] if len(parts) > 2 else None
    node_id = parts[3] if len(parts) > 3 else None
    out = []
    for listing in listings:
        if name is not None and token(listing.service.name) != name:
            continue
        if node_id is not None and token(listing.node.id) != node_id:
            continue
        out.append(_encoder.encode(_response(verb, listing, counts)))
    return out


def _identity(listing: Listing) -> dict[str, Any]:
    service, node = listing.service, listing.node
    return {
        "name": token(service.name),
        "id": token(node.id),
        "version": semver(service.version),
        "metadata": {
            **service.metadata,
            **node.metadata,
            "microweave.service": service.name,
            "microweave.version": service.version,
            "microweave.node": node.id,
            "microweave.address": node.address,
        },
    }


def _path(service: Service, endpoint: str, metadata: dict[str, str]) -> str:
    handler, _, method = endpoint.partition(".")
    return metadata.get("path") or f"/{service.name}.{handler}/{method}"


def _response(verb: str, listing: Listing, counts: Callable[[str], EndpointCounts | None]) -> dict[str, Any]:
    service = listing.service
    if verb == "PING":
        return {"type": PING_TYPE, **_identity(listing)}
    if verb == "INFO":
        return {
            "type": INFO_TYPE,
            **_identity(listing),
            "description": f"microweave service {service.name} (gRPC and tcp at {listing.node.address})",
            "endpoints": [
                {
                    "name": token(e.name),
                    "subject": _path(service, e.name, e.metadata),
                    "queue_group": "",
                    "metadata": {**e.metadata, "microweave.endpoint": e.name},
                }
                for e in service.endpoints
            ],
        }
    known = counts(listing.node.id) or {}
    endpoints = []
    for e in service.endpoints:
        # a grpcio servicer's calls are counted under its path
        found = known.get(e.name) or known.get(e.metadata.get("path", ""))
        requests, errors, last_error, nanos = found or (0, 0, "", 0)
        endpoints.append(
            {
                "name": token(e.name),
                "subject": _path(service, e.name, e.metadata),
                "queue_group": "",
                "num_requests": requests,
                "num_errors": errors,
                "last_error": last_error,
                "processing_time": nanos,
                "average_processing_time": nanos // requests if requests else 0,
            }
        )
    return {
        "type": STATS_TYPE,
        **_identity(listing),
        "started": listing.started.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "endpoints": endpoints,
    }
