"""Protobuf descriptors → pydantic models and JSON (docs/api-style.md): every proto shape a service may use, on a
message made for the test. What the gateway sends must be what its schema says, and what the schema accepts
must become the message a service expects."""

from __future__ import annotations

import datetime as dt

import jsonschema
import pytest
from crm_gateway import jsonmap
from crm_gateway.schema import SchemaRegistry
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    struct_pb2,  # noqa: F401 - registers struct.proto in the default pool
    timestamp_pb2,  # noqa: F401
)
from pydantic import ValidationError

F = descriptor_pb2.FieldDescriptorProto


def _field(name, number, ftype, *, label=F.LABEL_OPTIONAL, type_name="", oneof=None, proto3_optional=False):
    f = F(name=name, number=number, type=ftype, label=label, json_name=name)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    if proto3_optional:
        f.proto3_optional = True
    return f


def _build_test_proto():
    """package crm.schematest.v1: a recursive Node with maps, a oneof, well-known types and more."""
    fp = descriptor_pb2.FileDescriptorProto(
        name="crm/schematest/v1/schematest.proto",
        package="crm.schematest.v1",
        syntax="proto3",
        dependency=[
            "google/protobuf/timestamp.proto",
            "google/protobuf/struct.proto",
        ],
    )
    fp.enum_type.add(name="Color").value.extend(
        [
            descriptor_pb2.EnumValueDescriptorProto(name="COLOR_UNSPECIFIED", number=0),
            descriptor_pb2.EnumValueDescriptorProto(name="COLOR_RED", number=1),
        ]
    )
    node = fp.message_type.add(name="Node")
    entry = node.nested_type.add(name="CountsEntry")
    entry.options.map_entry = True
    entry.field.extend([_field("key", 1, F.TYPE_STRING), _field("value", 2, F.TYPE_INT64)])
    node.oneof_decl.add(name="owner")
    node.oneof_decl.add(name="_score")
    node.field.extend(
        [
            _field("name", 1, F.TYPE_STRING),
            _field(
                "children", 2, F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".crm.schematest.v1.Node"
            ),
            _field(
                "counts",
                3,
                F.TYPE_MESSAGE,
                label=F.LABEL_REPEATED,
                type_name=".crm.schematest.v1.Node.CountsEntry",
            ),
            _field("user_id", 4, F.TYPE_STRING, oneof=0),
            _field("team_id", 5, F.TYPE_STRING, oneof=0),
            _field("at", 6, F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"),
            _field("blob", 8, F.TYPE_BYTES),
            _field("color", 9, F.TYPE_ENUM, type_name=".crm.schematest.v1.Color"),
            _field("score", 10, F.TYPE_INT32, oneof=1, proto3_optional=True),
            _field("attrs", 11, F.TYPE_MESSAGE, type_name=".google.protobuf.Struct"),
            _field("small", 12, F.TYPE_UINT32),
            _field("ratio", 13, F.TYPE_DOUBLE),
            _field("big", 14, F.TYPE_INT64),
            _field("flag", 15, F.TYPE_BOOL),
            _field("tags", 16, F.TYPE_STRING, label=F.LABEL_REPEATED),
        ]
    )
    # A second message named like identity's, to check names stay unique.
    fp.message_type.add(name="User").field.extend([_field("id", 1, F.TYPE_STRING)])
    pool = descriptor_pool.Default()
    try:
        file_desc = pool.FindFileByName(fp.name)
    except KeyError:
        file_desc = pool.Add(fp)
        file_desc = pool.FindFileByName(fp.name)
    return file_desc


FILE = _build_test_proto()
NODE = FILE.message_types_by_name["Node"]
NodeMsg = message_factory.GetMessageClass(NODE)


@pytest.fixture
def registry():
    return SchemaRegistry()


def _schema(model):
    """The model's JSON schema with its definitions, as a validator sees it."""
    return model.model_json_schema(ref_template="#/$defs/{model}")


def test_output_schema_follows_the_style(registry):
    schema = _schema(registry.output(NODE))
    node = schema["$defs"]["Node"] if "$defs" in schema and "Node" in schema["$defs"] else schema
    props = node["properties"]
    # Absent values are null, never "": strings, enums, bytes and messages may be null.
    assert {"type": "null"} in props["name"]["anyOf"]
    assert props["big"]["type"] == "integer"  # 64-bit integers are numbers
    assert props["small"]["type"] == "integer"
    enum = next(a for a in props["color"]["anyOf"] if a.get("type") == "string")
    assert enum["enum"] == ["red"]  # short words, no UNSPECIFIED
    assert (
        props["counts"]["type"] == "object" and props["counts"]["additionalProperties"]["type"] == "integer"
    )
    assert props["tags"]["type"] == "array" and props["flag"]["type"] == "boolean"
    # Every field is always present in an answer.
    assert set(node["required"]) == set(props)


def test_what_is_sent_is_what_the_schema_says(registry):
    schema = _schema(registry.output(NODE))
    empty = jsonmap.to_json(NodeMsg())
    assert empty["name"] is None and empty["color"] is None and empty["at"] is None and empty["score"] is None
    assert empty["big"] == 0 and empty["flag"] is False and empty["tags"] == [] and empty["counts"] == {}
    full = NodeMsg(name="root", big=2**52, color=1, blob=b"\x00\xff", user_id="u1", score=0)
    full.children.add(name="leaf")
    full.counts["a"] = 3
    full.at.FromDatetime(dt.datetime(2025, 1, 31, 9, 30, tzinfo=dt.UTC))
    full.attrs.update({"k": "v"})
    sent = jsonmap.to_json(full)
    assert sent["big"] == 2**52 and sent["color"] == "red" and sent["score"] == 0
    assert sent["at"] == "2025-01-31T09:30:00Z" and sent["blob"] == "AP8="
    assert sent["children"][0]["name"] == "leaf" and sent["children"][0]["user_id"] is None
    for answer in (empty, sent):
        jsonschema.validate(answer, schema)


def test_input_round_trips_into_the_message(registry):
    model = registry.input(NODE)
    data = {
        "name": "root",
        "children": [{"name": "leaf", "tags": ["x"]}],
        "counts": {"a": 12, "b": 7},
        "team_id": "t1",
        "at": "2025-01-31T17:30:00+08:00",
        "blob": "AP8=",
        "color": "red",
        "score": 5,
        "attrs": {"source": "web", "n": [1, 2]},
        "big": 9007199254740992,
        "flag": True,
        "small": None,
    }
    dumped = model.model_validate(data).model_dump(mode="json", exclude_unset=True, by_alias=True)
    msg = NodeMsg()
    jsonmap.fill(msg, dumped)
    assert msg.big == 9007199254740992
    assert msg.counts["a"] == 12 and msg.counts["b"] == 7
    assert msg.at.ToDatetime(dt.UTC) == dt.datetime(2025, 1, 31, 9, 30, tzinfo=dt.UTC)
    assert msg.blob == b"\x00\xff" and msg.color == 1 and msg.score == 5 and msg.HasField("score")
    assert msg.WhichOneof("owner") == "team_id"
    assert msg.attrs["source"] == "web" and msg.children[0].tags == ["x"]
    assert msg.small == 0  # null: not set


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"surprise": 1}, "surprise"),
        ({"children": [{"surprise": 1}]}, "children"),
        ({"user_id": "u", "team_id": "t"}, None),
        ({"small": -1}, "small"),
        ({"small": "5"}, "small"),
        ({"small": 2**32}, "small"),
        ({"flag": "yes"}, "flag"),
        ({"name": 5}, "name"),
        ({"color": "blue"}, "color"),
        ({"color": "COLOR_RED"}, "color"),
        ({"color": "unspecified"}, "color"),
        ({"color": 1}, "color"),
        ({"at": "2025-01-31T09:30:00"}, "at"),
        ({"big": "12"}, "big"),
        ({"big": 2**53 + 1}, "big"),
        ({"tags": [None]}, "tags"),
    ],
)
def test_input_refuses_what_the_contract_does_not_allow(registry, data, field):
    with pytest.raises(ValidationError) as info:
        registry.input(NODE).model_validate(data)
    if field is not None:
        assert info.value.errors()[0]["loc"][0] == field


def test_models_are_built_once_and_names_stay_unique(registry):
    from crm.identity.v1 import identity_pb2

    assert registry.output(NODE) is registry.output(NODE)
    assert registry.input(NODE) is registry.input(NODE)
    assert registry.input(NODE).__name__ == "NodeInput" and registry.patch(NODE).__name__ == "NodePatch"
    identity_user = registry.output(identity_pb2.User.DESCRIPTOR)
    other_user = registry.output(FILE.message_types_by_name["User"])
    assert identity_user.__name__ == "User"
    assert other_user.__name__ == "SchematestUser"
    page = registry.page(NODE)
    assert page.__name__ == "NodePage"
    assert set(page.model_json_schema()["properties"]) == {"items", "next_cursor"}
