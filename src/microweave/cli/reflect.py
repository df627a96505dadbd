"""JSON in and out of protobuf endpoints (grpcio servicers), with the types learnt at call time.

A servicer's methods take protobuf bytes, and the CLI has no generated code for them; every
microweave node serves gRPC reflection for its servicers, so the message types come from there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory

from ..errors import BadRequest
from ..registry import Service
from .output import CliError

__all__ = ["ProtoJson", "proto_json"]


class ProtoJson:
    """Encodes a JSON value as the request message and decodes replies to JSON values."""

    def __init__(self, request_type: Any, response_type: Any) -> None:
        self.request_type = request_type
        self.response_type = response_type

    def encode(self, value: Any) -> bytes:
        try:
            message = json_format.ParseDict(value, self.request_type())
        except (json_format.ParseError, TypeError, AttributeError) as exc:
            raise BadRequest(f"invalid request body: {exc}", id="microweave.cli") from None
        data: bytes = message.SerializeToString()
        return data

    def decode(self, data: bytes) -> Any:
        # every field printed, with its .proto name: the same reply shape whatever its values
        return json_format.MessageToDict(
            self.response_type.FromString(data),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )


def _load(address: str, path: str) -> ProtoJson:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    service_name, _, method_name = path.lstrip("/").partition("/")
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        return ProtoJson(
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
        )


async def proto_json(records: list[Service], path: str, *, timeout: float) -> ProtoJson:
    """The JSON codec for a servicer method, from the first node that answers reflection."""
    problems: list[str] = []
    for node in (n for r in records for n in r.nodes):
        try:
            return await asyncio.wait_for(asyncio.to_thread(_load, node.address, path), timeout)
        except TimeoutError:
            problems.append(f"{node.address}: no answer within {timeout:g}s")
        except grpc.RpcError as exc:
            problems.append(f"{node.address}: {exc.code().name} {exc.details()}")
        except KeyError as exc:
            problems.append(f"{node.address}: no {exc.args[0] if exc.args else path}")
    raise CliError(
        f"cannot learn the protobuf types of {path} over gRPC reflection ({'; '.join(problems)})",
        hint="call it from Python with the generated stub: Stub(client.channel(SERVICE))",
    )
