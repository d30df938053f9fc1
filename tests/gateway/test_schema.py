"""Protobuf descriptors → pydantic models: every proto shape a service may use, on a message made for the test."""

from __future__ import annotations

import datetime as dt

import pytest
from crm_gateway.schema import SchemaRegistry
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    struct_pb2,  # noqa: F401 - registers struct.proto in the default pool
    timestamp_pb2,  # noqa: F401
    wrappers_pb2,  # noqa: F401
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
    """package crm.schematest.v1: a recursive Node with maps, a oneof, wrappers, well-known types and more."""
    fp = descriptor_pb2.FileDescriptorProto(
        name="crm/schematest/v1/schematest.proto",
        package="crm.schematest.v1",
        syntax="proto3",
        dependency=[
            "google/protobuf/timestamp.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/wrappers.proto",
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
            _field("nick", 7, F.TYPE_MESSAGE, type_name=".google.protobuf.StringValue"),
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


def test_output_schema_follows_proto_json(registry):
    schema = registry.output(NODE).model_json_schema()
    schema = schema["$defs"]["Node"]  # a recursive model is a reference to its own definition
    props = schema["properties"]
    assert props["name"] == {"title": "Name", "type": "string"}
    assert props["big"]["type"] == "string" and props["big"]["format"] == "int64"
    assert props["small"]["type"] == "integer"
    assert props["color"]["enum"] == ["COLOR_UNSPECIFIED", "COLOR_RED"]
    assert props["at"]["format"] == "date-time"
    assert props["blob"]["format"] == "byte"
    assert props["counts"]["type"] == "object"
    assert props["counts"]["additionalProperties"]["format"] == "int64"
    assert props["children"]["items"] == {"$ref": "#/$defs/Node"}  # recursion resolved by name
    assert props["attrs"]["type"] == "object"
    assert props["tags"] == {"items": {"type": "string"}, "title": "Tags", "type": "array"}
    # Fields without presence are always printed; sub-messages, oneof members and `optional` may be absent.
    required = set(schema["required"])
    assert {
        "name",
        "children",
        "counts",
        "blob",
        "color",
        "small",
        "ratio",
        "big",
        "flag",
        "tags",
    } <= required
    assert not {"at", "nick", "user_id", "team_id", "score", "attrs"} & required


def test_output_schema_matches_what_json_format_prints(registry):
    model = registry.output(NODE)
    msg = NodeMsg(name="root", big=2**62, color=1, blob=b"\x00\xff", user_id="u1")
    msg.children.add(name="leaf")
    msg.counts["a"] = 3
    msg.at.FromDatetime(dt.datetime(2025, 1, 31, 9, 30, tzinfo=dt.UTC))
    printed = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert printed["big"] == str(2**62)
    parsed = model.model_validate(printed)  # the documented schema accepts what is really sent
    assert parsed.children[0].name == "leaf"


def test_input_accepts_proto_json_and_round_trips(registry):
    model = registry.input(NODE)
    data = {
        "name": "root",
        "children": [{"name": "leaf", "tags": ["x"]}],
        "counts": {"a": "12", "b": 7},
        "team_id": "t1",
        "at": "2025-01-31T17:30:00+08:00",
        "nick": None,
        "blob": "AP8=",
        "color": "COLOR_RED",
        "score": 5,
        "attrs": {"source": "web", "n": [1, 2]},
        "big": "9007199254740993",
        "flag": True,
    }
    dumped = model.model_validate(data).model_dump(mode="json", exclude_unset=True, by_alias=True)
    msg = NodeMsg()
    json_format.ParseDict(dumped, msg)
    assert msg.big == 9007199254740993
    assert msg.counts["a"] == 12 and msg.counts["b"] == 7
    assert msg.at.ToDatetime(dt.UTC) == dt.datetime(2025, 1, 31, 9, 30, tzinfo=dt.UTC)
    assert msg.blob == b"\x00\xff" and msg.color == 1 and msg.score == 5 and msg.HasField("score")
    assert msg.WhichOneof("owner") == "team_id"
    assert msg.attrs["source"] == "web"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"surprise": 1}, "surprise"),
        ({"children": [{"surprise": 1}]}, "children"),
        ({"user_id": "u", "team_id": "t"}, None),
        ({"small": -1}, "small"),
        ({"small": "5"}, "small"),
        ({"flag": "yes"}, "flag"),
        ({"name": 5}, "name"),
        ({"color": "COLOR_BLUE"}, "color"),
        ({"color": 1}, "color"),
        ({"at": "2025-01-31T09:30:00"}, "at"),
        ({"big": "12x"}, "big"),
        ({"big": str(2**63)}, "big"),
        ({"tags": [None]}, "tags"),
    ],
)
def test_input_refuses_what_the_proto_does_not_allow(registry, data, field):
    with pytest.raises(ValidationError) as info:
        registry.input(NODE).model_validate(data)
    if field is not None:
        assert info.value.errors()[0]["loc"][0] == field


def test_models_are_built_once_and_names_stay_unique(registry):
    from crm.identity.v1 import identity_pb2

    assert registry.output(NODE) is registry.output(NODE)
    assert registry.input(NODE) is registry.input(NODE)
    identity_user = registry.output(identity_pb2.User.DESCRIPTOR)
    other_user = registry.output(FILE.message_types_by_name["User"])
    assert identity_user.__name__ == "User"
    assert other_user.__name__ == "SchematestV1User"
    page = registry.page(NODE)
    assert set(page.model_json_schema()["properties"]) == {"items", "next_cursor"}
