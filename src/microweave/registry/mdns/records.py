"""go-micro's mDNS layout: names, the TXT record, and the zeroconf records that carry a node.

go-micro (registry/mdns_registry.go) announces each node as one DNS-SD instance in its own
`micro.` domain (not `local.`):

- PTR  `<service>.micro.`                 -> `<node-id>.<service>.micro.`
- SRV  `<node-id>.<service>.micro.`        -> host, node port
- TXT  `<node-id>.<service>.micro.`        hex(zlib(JSON {Metadata, Service, Version, Endpoints}))
                                           cut into strings of at most 255 characters
- A/AAAA of the host                       the node's IP

and, once per service, a wildcard instance `<service>._services.micro.` (PTR from
`_services.micro.`, port 9999, address 0.0.0.0) that its ListServices browses. The TXT JSON
uses Go's field names (no json tags on go-micro's mdnsTxt): `Metadata` is the node's metadata,
`Endpoints` the service's. We write the same records so go-micro finds our nodes and we find
its. Our host name is the instance name itself: two nodes on one machine with different
addresses then never share an A record (go-micro uses the machine's hostname).

python-zeroconf answers queries only for `ServiceInfo`s, whose constructor insists on the
`local.` domain; the names are public attributes, so a node's info is built with a placeholder
and renamed (`_info`). The query answering, known-answer suppression and goodbyes are then
zeroconf's own.
"""

from __future__ import annotations

import ipaddress

import msgspec
from zeroconf import ServiceInfo

from ...errors import RegistryError
from .. import Endpoint, Node, Service, Value
from ..packed import pack_raw, unpack_raw
from ..untrusted import MAX_VALUE_DEPTH, too_deep

__all__ = [
    "MAX_TXT_JSON",
    "Txt",
    "decode_txt",
    "encode_txt",
    "node_info",
    "split_txt",
    "wildcard_info",
]

#: the most JSON one node's TXT may inflate to; bigger records from the network are ignored
MAX_TXT_JSON = 256 * 1024
_CHUNK = 255  # go-micro's cut (a TXT string holds at most 255 bytes)
_PLACEHOLDER_TYPE = "_microweave._tcp.local."
#: go-micro's wildcard entry: port and address of `<service>._services.<domain>.`
_WILDCARD_PORT = 9999


class _GoValue(msgspec.Struct):
    name: str = ""
    type: str = ""
    values: list[_GoValue] | None = None


class _GoEndpoint(msgspec.Struct):
    name: str = ""
    request: _GoValue | None = None
    response: _GoValue | None = None
    metadata: dict[str, str] | None = None  # Go writes a nil map as null


class _GoTxt(msgspec.Struct):
    """go-micro's mdnsTxt, fields in Go's declaration order (so the JSON matches byte for byte)."""

    Metadata: dict[str, str] | None = None
    Service: str = ""
    Version: str = ""
    Endpoints: list[_GoEndpoint] | None = None


class Txt(_GoTxt):
    """go-micro's record plus the service's own metadata, which go-micro's has no field for.

    Written only when the service has metadata; go-micro's decoder ignores a field it does not
    know (and `ServiceMetadata` matches none of its four, even case-insensitively).
    """

    ServiceMetadata: dict[str, str] | None = None


def _go_value(value: Value | None) -> _GoValue | None:
    if value is None:
        return None
    inner = None if value.values is None else [v for v in map(_go_value, value.values) if v is not None]
    return _GoValue(value.name, value.type, inner)


def _value(value: _GoValue | None) -> Value | None:
    if value is None:
        return None
    inner = None if value.values is None else [v for v in map(_value, value.values) if v is not None]
    return Value(value.name, value.type, inner)


def encode_txt(service: Service, node: Node) -> list[bytes]:
    """The TXT strings go-micro writes for `node` of `service`."""
    txt = (Txt if service.metadata else _GoTxt)(
        Metadata=node.metadata,
        Service=service.name,
        Version=service.version,
        Endpoints=[
            _GoEndpoint(e.name, _go_value(e.request), _go_value(e.response), e.metadata)
            for e in service.endpoints
        ],
    )
    if isinstance(txt, Txt):
        txt.ServiceMetadata = service.metadata
    text = pack_raw(msgspec.json.encode(txt)).encode("ascii")
    return [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [b""]


def decode_txt(strings: list[bytes]) -> Txt:
    """go-micro's record from its TXT strings; ValueError when it is not one (or is too big,
    or its Value trees nest deeper than any extractor writes: see untrusted.py)."""
    try:
        data = unpack_raw(b"".join(strings).decode("ascii"))
    except UnicodeDecodeError:
        raise ValueError("TXT is not hex") from None
    if len(data) > MAX_TXT_JSON:
        raise ValueError(f"TXT inflates to {len(data)} bytes, over {MAX_TXT_JSON}")
    try:
        txt = msgspec.json.decode(data, type=Txt)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"TXT is not go-micro's record: {exc}") from None
    except RecursionError:
        raise ValueError("TXT values nest too deep to decode") from None
    if too_deep(txt.Endpoints):
        raise ValueError(f"TXT values nest deeper than {MAX_VALUE_DEPTH} levels")
    return txt


def split_txt(text: bytes) -> list[bytes]:
    """The strings of a TXT record's wire data (each prefixed with its length)."""
    strings: list[bytes] = []
    i = 0
    while i < len(text):
        length = text[i]
        strings.append(text[i + 1 : i + 1 + length])
        i += 1 + length
    return strings


def service_from_txt(txt: Txt, node_id: str, address: str) -> Service:
    """The one-node record a TXT (and the node's SRV and address) describe."""
    endpoints = [
        Endpoint(e.name, _value(e.request), _value(e.response), dict(e.metadata or {}))
        for e in txt.Endpoints or ()
    ]
    node = Node(id=node_id, address=address, metadata=dict(txt.Metadata or {}))
    metadata = dict(txt.ServiceMetadata or {})
    return Service(txt.Service, txt.Version, metadata, endpoints, [node])


def _check_labels(name: str, what: str, where: str) -> None:
    labels = name.split(".")
    if not name or any(not label or len(label.encode()) > 63 for label in labels):
        raise RegistryError(
            f"{where}: {what} {name!r} cannot be a DNS name: each dot-separated part must be"
            " 1 to 63 bytes; pick a shorter name"
        )


def _host_port(address: str, where: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 < number < 65536:
            raise ValueError(address)
    except ValueError:
        raise RegistryError(
            f"{where}: node address {address!r} is not IP:port; mDNS announces an IP address,"
            " so advertise one (not a host name)"
        ) from None
    return host, number


def _renamed(info: ServiceInfo, type_: str, name: str) -> ServiceInfo:
    info.type = type_
    info.name = name  # the setter also resets the key and cached records
    info.server = name
    info.server_key = name.lower()
    return info


def _txt_wire(strings: list[bytes]) -> bytes:
    return b"".join(bytes([len(s)]) + s for s in strings)


def node_info(service: Service, node: Node, domain: str, ttl: int, where: str) -> ServiceInfo:
    """The zeroconf instance announcing `node` the way go-micro does."""
    _check_labels(service.name, "service name", where)
    _check_labels(node.id, "node id", where)
    if "." in node.id:
        raise RegistryError(f"{where}: node id {node.id!r} has a dot; mDNS instance names cannot")
    host, port = _host_port(node.address, where)
    type_ = f"{service.name}.{domain}."
    name = f"{node.id}.{type_}"
    if len(name.encode()) > 255:
        raise RegistryError(f"{where}: {name!r} is longer than a DNS name may be (255 bytes)")
    info = ServiceInfo(
        _PLACEHOLDER_TYPE,
        "node." + _PLACEHOLDER_TYPE,
        port=port,
        properties=_txt_wire(encode_txt(service, node)),
        parsed_addresses=[host],
        host_ttl=ttl,
        other_ttl=ttl,
    )
    return _renamed(info, type_, name)


def wildcard_info(service: str, domain: str, ttl: int) -> ServiceInfo:
    """go-micro's per-service entry under `_services.<domain>.` that ListServices browses."""
    type_ = f"_services.{domain}."
    info = ServiceInfo(
        _PLACEHOLDER_TYPE,
        "list." + _PLACEHOLDER_TYPE,
        port=_WILDCARD_PORT,
        properties=b"\x00",
        parsed_addresses=["0.0.0.0"],
        host_ttl=ttl,
        other_ttl=ttl,
    )
    return _renamed(info, type_, f"{service}.{type_}")


def instance_node_id(instance: str, service: str, domain: str) -> str | None:
    """The node id in `<node-id>.<service>.<domain>.`, or None when the name is not of it."""
    suffix = f".{service}.{domain}.".lower()
    if not instance.lower().endswith(suffix) or len(instance) <= len(suffix):
        return None
    return instance[: -len(suffix)]
