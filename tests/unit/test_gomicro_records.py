"""go-micro's records as its Go code writes them: nil maps and slices are JSON `null`."""

from __future__ import annotations

import msgspec
import pytest

from microweave.registry import Service

# written by go-micro v5.12.0's etcd registry for tests/interop/gomicro/server (one endpoint kept)
GO_MICRO_RECORD = (
    '{"name":"gogreeter","version":"1.2.3","metadata":null,"endpoints":[{"request":{"name":"HelloRequest",'
    '"type":"HelloRequest","values":[{"name":"name","type":"string","values":null}]},"response":{"name":'
    '"HelloReply","type":"HelloReply","values":[{"name":"message","type":"string","values":null}]},'
    '"metadata":{},"name":"Greeter.Hello"}],"nodes":[{"metadata":{"protocol":"grpc","server":"grpc"},'
    '"id":"gogreeter-7c36d08a","address":"127.0.0.1:36307"}]}'
)


def test_a_go_micro_record_with_null_service_metadata_decodes() -> None:
    service = Service.from_json(GO_MICRO_RECORD)
    assert (service.name, service.version, service.metadata) == ("gogreeter", "1.2.3", {})
    assert [e.name for e in service.endpoints] == ["Greeter.Hello"]
    assert service.endpoints[0].request is not None and service.endpoints[0].request.name == "HelloRequest"
    assert [(n.id, n.address, n.metadata["protocol"]) for n in service.nodes] == [
        ("gogreeter-7c36d08a", "127.0.0.1:36307", "grpc")
    ]


def test_null_endpoints_and_node_metadata_read_as_empty() -> None:
    raw = (
        '{"name":"x","metadata":null,"endpoints":null,"nodes":[{"id":"x-1","address":"a:1","metadata":null}]}'
    )
    service = Service.from_json(raw)
    assert service.endpoints == [] and service.nodes[0].metadata == {}


@pytest.mark.parametrize("raw", ['{"name": null}', "[1]", '{"name":"x","nodes":[{"id":1}]}'])
def test_what_is_not_a_service_still_fails(raw: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        Service.from_json(raw)
