"""Protobuf messages to and from the API's JSON (the mapping schema.py documents), compiled once per message.

`to_json(message)` gives the answer's dict: every field present; empty strings, unset enums, unset messages
and unset optional scalars are `None`; enums are short lower-case words; 64-bit integers are numbers.

`fill(message, data)` sets a message from a validated body or query (schema.py's models already checked
types and bounds): `None` leaves a field unset, enum words become numbers, times and free-form JSON are parsed.

Compiling a plan per message type keeps the request path to a loop of getattr calls: no descriptor walking,
no reflection per request.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from crm_gateway import contract, schema

FD = FieldDescriptor
Convert = Callable[[Any], Any]

_OUT: dict[str, Callable[[Message], dict[str, Any]]] = {}
_IN: dict[str, Callable[[Message, dict[str, Any]], None]] = {}


# ---------------------------------------------------------------- out


def to_json(message: Message) -> dict[str, Any]:
    desc = message.DESCRIPTOR
    fn = _OUT.get(desc.full_name)
    if fn is None:
        fn = _compile_out(desc)
    return fn(message)


def _timestamp_out(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToJsonString()


def _struct_out(value: Message) -> Any:
    return json_format.MessageToDict(value)


def _bytes_out(value: bytes) -> str | None:
    return base64.b64encode(value).decode() if value else None


def _single_out(field: FieldDescriptor) -> Convert | None:
    """The conversion of one value of a field (None: the value is its own JSON)."""
    t = field.type
    if t == FD.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == schema.TIMESTAMP:
            return _timestamp_out
        if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
            return _struct_out
        if name.startswith("google.protobuf."):
            return _struct_out
        return to_json
    if t == FD.TYPE_ENUM:
        return contract.enum_to_json(field.enum_type).get
    if t == FD.TYPE_BYTES:
        return _bytes_out
    return None


def _compile_out(desc: Descriptor) -> Callable[[Message], dict[str, Any]]:
    if desc.full_name == "google.protobuf.Struct":  # answered whole (a response_body): the JSON it holds
        _OUT[desc.full_name] = _struct_out
        return _struct_out
    steps: list[tuple[str, int, Convert | None]] = []
    # kinds: 0 plain scalar, 1 string ("" → None), 2 presence (unset → None), 3 repeated, 4 map, 5 enum/bytes
    for field in desc.fields:
        if schema.excluded(field, schema.OUTPUT):
            continue
        conv = _single_out(field)
        if schema.is_map(field):
            value_conv = _single_out(field.message_type.fields_by_name["value"])
            steps.append((field.name, 4, value_conv))
        elif field.is_repeated:
            steps.append((field.name, 3, conv))
        elif field.type == FD.TYPE_MESSAGE or field.has_presence:
            steps.append((field.name, 2, conv))
        elif field.type == FD.TYPE_STRING:
            steps.append((field.name, 1, None))
        elif conv is not None:
            steps.append((field.name, 5, conv))
        else:
            steps.append((field.name, 0, None))

    def convert(message: Message) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, kind, conv in steps:
            if kind == 0:
                out[name] = getattr(message, name)
            elif kind == 1:
                out[name] = getattr(message, name) or None
            elif kind == 2:
                if message.HasField(name):
                    value = getattr(message, name)
                    out[name] = conv(value) if conv is not None else value
                else:
                    out[name] = None
            elif kind == 3:
                values = getattr(message, name)
                out[name] = [conv(v) for v in values] if conv is not None else list(values)
            elif kind == 4:
                items = getattr(message, name)
                out[name] = {k: conv(v) for k, v in items.items()} if conv is not None else dict(items)
            else:
                out[name] = conv(getattr(message, name))  # type: ignore[misc]
        return out

    _OUT[desc.full_name] = convert
    return convert


# ---------------------------------------------------------------- in


def fill(message: Message, data: dict[str, Any]) -> None:
    desc = message.DESCRIPTOR
    fn = _IN.get(desc.full_name)
    if fn is None:
        fn = _compile_in(desc)
    fn(message, data)


def _timestamp_in(target: timestamp_pb2.Timestamp, value: Any) -> None:
    if isinstance(value, dt.datetime):
        target.FromDatetime(value)
    else:
        target.FromJsonString(str(value))


def _struct_in(target: Message, value: Any) -> None:
    json_format.ParseDict(value, target)


def _scalar_in(field: FieldDescriptor) -> Convert | None:
    if field.type == FD.TYPE_ENUM:
        return contract.enum_from_json(field.enum_type).__getitem__
    if field.type == FD.TYPE_BYTES:
        return lambda v: base64.b64decode(v)
    return None


def _compile_in(desc: Descriptor) -> Callable[[Message, dict[str, Any]], None]:
    setters: dict[str, Callable[[Message, Any], None]] = {}
    for field in desc.fields:
        setters[field.name] = _setter(field)

    def convert(message: Message, data: dict[str, Any]) -> None:
        for name, value in data.items():
            if value is None:
                continue
            setter = setters.get(name)
            if setter is None:
                raise KeyError(name)
            setter(message, value)

    _IN[desc.full_name] = convert
    return convert


def _setter(field: FieldDescriptor) -> Callable[[Message, Any], None]:
    name = field.name
    if schema.is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        if value_field.type == FD.TYPE_MESSAGE:

            def set_map_messages(message: Message, value: Any) -> None:
                target = getattr(message, name)
                for k, v in value.items():
                    _message_in(value_field, target[k], v)

            return set_map_messages
        conv = _scalar_in(value_field)

        def set_map(message: Message, value: Any) -> None:
            target = getattr(message, name)
            for k, v in value.items():
                target[k] = conv(v) if conv is not None else v

        return set_map
    if field.type == FD.TYPE_MESSAGE:
        if field.is_repeated:

            def set_messages(message: Message, value: Any) -> None:
                target = getattr(message, name)
                for v in value:
                    _message_in(field, target.add(), v)

            return set_messages

        def set_message(message: Message, value: Any) -> None:
            _message_in(field, getattr(message, name), value)
            if not message.HasField(name):  # an empty object still sets the field
                getattr(message, name).SetInParent()

        return set_message
    conv = _scalar_in(field)
    if field.is_repeated:

        def set_list(message: Message, value: Any) -> None:
            getattr(message, name).extend([conv(v) for v in value] if conv is not None else value)

        return set_list

    def set_scalar(message: Message, value: Any) -> None:
        setattr(message, name, conv(value) if conv is not None else value)

    return set_scalar


def _message_in(field: FieldDescriptor, target: Message, value: Any) -> None:
    full = field.message_type.full_name
    if full == schema.TIMESTAMP:
        _timestamp_in(target, value)  # type: ignore[arg-type]
    elif full.startswith("google.protobuf."):
        if isinstance(target, struct_pb2.Struct):
            target.update(value)
        else:
            _struct_in(target, value)
    else:
        fill(target, value)
