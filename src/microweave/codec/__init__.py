"""Codecs: turn a handler's request and response types into bytes and back.

A `TypeCodec` is built once per type and cached: msgspec Structs, dataclasses and plain types go
through msgspec's compiled decoders; pydantic models through pydantic's own JSON validator; a
protobuf message through its own serializer. Decoding errors become `BadRequest` naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import msgspec

from ..errors import BadRequest

__all__ = ["JSON", "MSGPACK", "PROTO", "TypeCodec", "describe", "type_codec"]

JSON = "application/json"
MSGPACK = "application/msgpack"
PROTO = "application/protobuf"


class TypeCodec(Protocol):
    """Encodes and decodes one Python type in one or more content types."""

    def encode(self, obj: Any, content_type: str = JSON) -> bytes: ...

    def decode(self, data: bytes, content_type: str = JSON) -> Any: ...


# msgspec raises these for bytes that are not valid UTF-8 and for absurdly deep nesting
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _why(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def _check_content_type(content_type: str) -> None:
    if content_type not in (JSON, MSGPACK):
        raise BadRequest(f"unsupported content type {content_type!r}; use {JSON} or {MSGPACK}")


class _MsgspecCodec:
    """Structs, dataclasses, TypedDicts, builtins: msgspec validates while it decodes."""

    __slots__ = ("_json", "_msgpack")

    def __init__(self, tp: Any) -> None:
        self._json = msgspec.json.Decoder(tp)
        self._msgpack = msgspec.msgpack.Decoder(tp)

    def encode(self, obj: Any, content_type: str = JSON) -> bytes:
        if content_type == JSON:
            return _json_encoder.encode(obj)
        _check_content_type(content_type)
        return _msgpack_encoder.encode(obj)

    def decode(self, data: bytes, content_type: str = JSON) -> Any:
        try:
            if content_type == JSON:
                return self._json.decode(data)
            _check_content_type(content_type)
            return self._msgpack.decode(data)
        except _UNDECODABLE as exc:  # ValidationError is a DecodeError
            raise BadRequest(f"invalid request body: {_why(exc)}") from None


class _PydanticCodec:
    __slots__ = ("_adapter",)

    def __init__(self, tp: Any) -> None:
        import pydantic

        self._adapter = pydantic.TypeAdapter(tp)

    def encode(self, obj: Any, content_type: str = JSON) -> bytes:
        if content_type == JSON:
            out: bytes = self._adapter.dump_json(obj)
            return out
        _check_content_type(content_type)
        return _msgpack_encoder.encode(self._adapter.dump_python(obj, mode="json"))

    def decode(self, data: bytes, content_type: str = JSON) -> Any:
        import pydantic

        try:
            if content_type == JSON:
                return self._adapter.validate_json(data)
            _check_content_type(content_type)
            return self._adapter.validate_python(msgspec.msgpack.decode(data))
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in exc.errors()
            )
            raise BadRequest(f"invalid request body: {problems}") from None
        except _UNDECODABLE as exc:
            raise BadRequest(f"invalid request body: {_why(exc)}") from None


class _ProtoCodec:
    """A protobuf message class: binary on the wire; JSON via protobuf's json_format."""

    __slots__ = ("_cls",)

    def __init__(self, cls: Any) -> None:
        self._cls = cls

    def encode(self, obj: Any, content_type: str = PROTO) -> bytes:
        if content_type == JSON:
            from google.protobuf import json_format

            text: str = json_format.MessageToJson(obj)
            return text.encode()
        out: bytes = obj.SerializeToString()
        return out

    def decode(self, data: bytes, content_type: str = PROTO) -> Any:
        try:
            if content_type == JSON:
                from google.protobuf import json_format

                return json_format.Parse(data, self._cls())
            return self._cls.FromString(data)
        except Exception as exc:  # protobuf raises DecodeError or ParseError
            raise BadRequest(f"invalid request body: {exc}") from None


def is_pydantic_model(tp: Any) -> bool:
    mro = getattr(tp, "__mro__", ())
    return any(c.__module__.startswith("pydantic") and c.__name__ == "BaseModel" for c in mro)


def is_proto_message(tp: Any) -> bool:
    return hasattr(tp, "DESCRIPTOR") and hasattr(tp, "FromString")


_codecs: dict[Any, TypeCodec] = {}


def type_codec(tp: Any) -> TypeCodec:
    """The codec for a type, built once."""
    codec = _codecs.get(tp)
    if codec is None:
        if is_proto_message(tp):
            codec = _ProtoCodec(tp)
        elif is_pydantic_model(tp):
            codec = _PydanticCodec(tp)
        else:
            codec = _MsgspecCodec(tp)
        _codecs[tp] = codec
    return codec


def describe(tp: Any, name: str = "", _depth: int = 0) -> dict[str, Any] | None:
    """A go-micro `Value` ({name, type, values}) describing a type, for registry endpoints."""
    if tp is None or tp is type(None):
        return None
    type_name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    values: list[dict[str, Any]] = []
    if _depth < 3:
        if is_proto_message(tp):
            values = [_describe_proto_field(f, _depth) for f in tp.DESCRIPTOR.fields]
        else:
            for field, field_type in _fields(tp):
                value = describe(field_type, field, _depth + 1)
                if value is not None:
                    values.append(value)
    return {"name": name or type_name, "type": type_name, "values": values or None}


def _fields(tp: Any) -> list[tuple[str, Any]]:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        hints = _hints(tp)
        return [(f, hints.get(f, Any)) for f in tp.__struct_fields__]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return [(f.name, hints.get(f.name, Any)) for f in dataclasses.fields(tp)]
    if is_pydantic_model(tp):
        return [(k, f.annotation) for k, f in tp.model_fields.items()]
    return []


def _hints(tp: Any) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(tp)
    except Exception:  # unresolvable forward references: describe what we can
        return {}


def _describe_proto_field(field: Any, depth: int) -> dict[str, Any]:
    if field.message_type is not None:
        return {"name": field.name, "type": field.message_type.name, "values": None}
    return {"name": field.name, "type": _PROTO_TYPES.get(field.type, "bytes"), "values": None}


_PROTO_TYPES = {
    1: "double",
    2: "float",
    3: "int64",
    4: "uint64",
    5: "int32",
    8: "bool",
    9: "string",
}
