"""Between JSON-shaped dicts and the codegen.v1 messages (both fronts and the client use these)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor

from codegen_ray.proto import codegen_pb2 as pb


def to_struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct numbers are doubles; integral ones come back as ints, as they were sent."""
    return _ints(json_format.MessageToDict(struct))


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def session_to_proto(info: dict[str, Any]) -> pb.Session:
    return pb.Session(
        session_id=info["session_id"],
        state=info["state"],
        node_id=info.get("node_id", ""),
        worker_id=info.get("worker_id", ""),
        created_ms=info.get("created_ms", 0),
        last_activity_ms=info.get("last_activity_ms", 0),
        metadata=info.get("metadata", {}),
        env=info.get("env", {}),
        limits=to_struct(info.get("limits")),
        last_checkpoint_id=info.get("last_checkpoint_id", ""),
    )


def session_from_proto(session: pb.Session) -> dict[str, Any]:
    data = json_format.MessageToDict(
        session, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for key in ("created_ms", "last_activity_ms"):
        data[key] = int(data.get(key, 0))
    data["limits"] = from_struct(session.limits)
    return data


def message_to_dict(message: Any) -> dict[str, Any]:
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _int64_as_int(message.DESCRIPTOR, _ints(data))


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64}


def _int64_as_int(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    """JSON mapping writes 64-bit integers as strings; give them back as ints."""
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.type in _INT64:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            if field.message_type.full_name.startswith("google.protobuf."):
                continue
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict):
                    _int64_as_int(field.message_type, item)
    return data
