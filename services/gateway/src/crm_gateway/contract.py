"""What the contracts say about the public API, read from the descriptors: nothing here is written per route.

- `http_rule(method)`: the method's standard `google.api.http` rule (verb, path, body, response_body).
- `behaviours(field)`: its `google.api.field_behavior` (REQUIRED, OUTPUT_ONLY, IMMUTABLE…).
- `is_public(method)`, `cache_control(method)`, `media_type(method)`: the options of crm/common/v1/api.proto.
- `comment(full_name)`: the proto comment of a message, field, enum value, service or method, from the
  descriptor set `make gen` writes with source info (crm/contracts.binpb): the API's descriptions are the
  contracts' comments.
- `enum_short(value)`: the JSON spelling of an enum value: its name without the enum's prefix, lower-case
  (`LEAD_SOURCE_EVENT` → `event`); the zero value (`*_UNSPECIFIED`) has none: it is `null`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from crm.common.v1 import api_pb2
from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import EnumDescriptor, EnumValueDescriptor, FieldDescriptor, MethodDescriptor

FB = field_behavior_pb2
REQUIRED = FB.REQUIRED
OUTPUT_ONLY = FB.OUTPUT_ONLY
IMMUTABLE = FB.IMMUTABLE
INPUT_ONLY = FB.INPUT_ONLY
VERBS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class HttpRule:
    verb: str  # upper case: GET, POST, PUT, PATCH, DELETE
    path: str  # e.g. /api/v1/accounts/{id}
    body: str  # "" (no body), "*" (every field not in the path) or one field of the request
    response_body: str  # "" (the whole response) or one field of it


def http_rule(method: MethodDescriptor) -> HttpRule | None:
    opts = method.GetOptions()
    if not opts.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = opts.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    if verb not in VERBS:
        raise ValueError(f"{method.full_name}: unsupported HTTP rule {verb!r}")
    return HttpRule(verb.upper(), getattr(rule, verb), rule.body, rule.response_body)


@functools.cache
def behaviours(field: FieldDescriptor) -> frozenset[int]:
    return frozenset(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def is_public(method: MethodDescriptor) -> bool:
    return bool(method.GetOptions().Extensions[api_pb2.public])


def cache_control(method: MethodDescriptor) -> str:
    return str(method.GetOptions().Extensions[api_pb2.cache_control])


def media_type(method: MethodDescriptor) -> str:
    return str(method.GetOptions().Extensions[api_pb2.media_type]) or "application/octet-stream"


# ---------------------------------------------------------------- enums


def enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_short(value: EnumValueDescriptor) -> str | None:
    if value.number == 0:
        return None
    return value.name.removeprefix(enum_prefix(value.type)).lower()


@functools.cache
def enum_names(enum: EnumDescriptor) -> tuple[str, ...]:
    """The JSON names of an enum's values, zero excluded, in declaration order."""
    return tuple(n for v in enum.values if (n := enum_short(v)) is not None)


@functools.cache
def enum_to_json(enum: EnumDescriptor) -> dict[int, str | None]:
    return {v.number: enum_short(v) for v in enum.values}


@functools.cache
def enum_from_json(enum: EnumDescriptor) -> dict[str, int]:
    return {n: v.number for v in enum.values if (n := enum_short(v)) is not None}


# ---------------------------------------------------------------- comments

# Paths of SourceCodeInfo locations (descriptor.proto field numbers).
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM = 2, 3, 4
_ENUM_VALUE, _METHOD = 2, 2


def _walk_message(
    names: dict[tuple[int, ...], str], m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str
) -> None:
    full = scope + m.name
    names[path] = full
    for i, fld in enumerate(m.field):
        names[(*path, _FIELD, i)] = f"{full}.{fld.name}"
    for i, nested in enumerate(m.nested_type):
        _walk_message(names, nested, (*path, _NESTED, i), full + ".")
    for i, e in enumerate(m.enum_type):
        _walk_enum(names, e, (*path, _NESTED_ENUM, i), full + ".")


def _walk_enum(
    names: dict[tuple[int, ...], str],
    e: descriptor_pb2.EnumDescriptorProto,
    path: tuple[int, ...],
    scope: str,
) -> None:
    full = scope + e.name
    names[path] = full
    for i, v in enumerate(e.value):
        # Enum values live in the enum's parent scope in protobuf; keyed here under the enum.
        names[(*path, _ENUM_VALUE, i)] = f"{full}.{v.name}"


@functools.cache
def _comments() -> dict[str, str]:
    data = resources.files("crm").joinpath("contracts.binpb").read_bytes()
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    out: dict[str, str] = {}
    for f in fds.file:
        names: dict[tuple[int, ...], str] = {}
        prefix = f.package + "." if f.package else ""
        for i, m in enumerate(f.message_type):
            _walk_message(names, m, (_MESSAGE, i), prefix)
        for i, e in enumerate(f.enum_type):
            _walk_enum(names, e, (_ENUM, i), prefix)
        for i, s in enumerate(f.service):
            full = prefix + s.name
            names[(_SERVICE, i)] = full
            for j, meth in enumerate(s.method):
                names[(_SERVICE, i, _METHOD, j)] = f"{full}.{meth.name}"
        for loc in f.source_code_info.location:
            name = names.get(tuple(loc.path))
            text = (loc.leading_comments or loc.trailing_comments).strip()
            if name and text:
                out[name] = _clean(text)
    return out


def _clean(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        if not line:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def comment(full_name: str) -> str:
    """The comment of a message, field (`pkg.Msg.field`), enum value (`pkg.Enum.VALUE`) or method."""
    return _comments().get(full_name, "")


def field_comment(field: FieldDescriptor) -> str:
    return comment(f"{field.containing_type.full_name}.{field.name}")


def enum_value_comment(value: EnumValueDescriptor) -> str:
    return comment(f"{value.type.full_name}.{value.name}")
