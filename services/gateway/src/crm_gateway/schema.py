"""Pydantic models made from protobuf descriptors, so the OpenAPI document *is* the proto contract.

Nothing here is written per message: a service's .proto is the single source of every field name and type.
The JSON shape is protobuf's canonical JSON mapping (what `google.protobuf.json_format` reads and writes) with
the proto field names kept (snake_case):

| proto                            | JSON                                                        |
|----------------------------------|-------------------------------------------------------------|
| string, bool, int32, float…      | the same JSON type                                          |
| int64, uint64, (s)fixed64…       | a string of digits (JSON numbers lose precision above 2^53) |
| enum                             | the value's name, e.g. "USER_STATUS_ACTIVE"                 |
| bytes                            | base64 string                                               |
| repeated T / map<K, V>           | array / object (map keys are strings)                       |
| message                          | object                                                      |
| google.protobuf.Timestamp        | RFC 3339 string, e.g. "2025-01-31T09:30:00Z"                |
| google.protobuf.Duration         | "1.5s"                                                      |
| Struct / Value / ListValue       | any JSON object / value / array                             |
| wrappers (StringValue…)          | the wrapped value or null                                   |

Two kinds of model exist for each message:
- output: what responses carry. Fields without presence are always present (json_format prints their defaults);
  fields with presence (sub-messages, `optional` scalars) are left out when unset.
- input: what request bodies may carry. Every field is optional (proto3 has no required fields; the service
  checks what it needs and answers 422 with the fields named); unknown fields are refused (422 naming them);
  a `null` clears the field; at most one field of a oneof may be set.

Input models bound every value (`bounds.py`): strings have a maxLength, arrays maxItems, maps and free-form
objects maxProperties, by the field's kind; a value over its bound is a 422 naming the field.

Models are built once per message (and kind) and cached: nothing is built on the request path.
"""

from __future__ import annotations

import datetime as dt
import keyword
from typing import Annotated, Any, ForwardRef, Literal

from annotated_types import Ge, Le, MaxLen
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    create_model,
    model_validator,
)

from crm_gateway import bounds

FD = FieldDescriptor

INT64_TYPES = {FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64, FD.TYPE_UINT64, FD.TYPE_FIXED64}
INT32_BOUNDS = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
}
INT64_BOUNDS = {FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1)}
FLOAT_TYPES = {FD.TYPE_FLOAT, FD.TYPE_DOUBLE}

INT64_SCHEMA = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
BYTES_SCHEMA = {"type": "string", "format": "byte"}
DURATION_SCHEMA = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$", "examples": ["1.5s"]}


def _bounded(schema: dict[str, Any], max_length: int) -> dict[str, Any]:
    return {**schema, "maxLength": max_length}


def _parse_int64(value: Any) -> Any:
    if isinstance(value, str) and len(value) <= 21 and value.lstrip("-").isdigit():
        return int(value)
    return value


def _int64_output() -> Any:
    return Annotated[str, WithJsonSchema(INT64_SCHEMA)]


def _int64_input(ftype: int) -> Any:
    from pydantic import BeforeValidator

    low, high = INT64_BOUNDS.get(ftype, (-(2**63), 2**63 - 1))
    return Annotated[
        int,
        BeforeValidator(_parse_int64),
        Ge(low),
        Le(high),
        WithJsonSchema(_bounded(INT64_SCHEMA, bounds.SHAPED_STRING_MAX_LENGTH)),
    ]


def _text(max_length: int) -> Any:
    return Annotated[str, Strict(), MaxLen(max_length)]


_JSON = AfterValidator(bounds.check_json)
_BYTES_INPUT = Annotated[
    str, MaxLen(bounds.BYTES_MAX_LENGTH), WithJsonSchema(_bounded(BYTES_SCHEMA, bounds.BYTES_MAX_LENGTH))
]


WELL_KNOWN_OUTPUT: dict[str, Any] = {
    "google.protobuf.Timestamp": dt.datetime,
    "google.protobuf.Duration": Annotated[str, WithJsonSchema(DURATION_SCHEMA)],
    "google.protobuf.Struct": dict[str, Any],
    "google.protobuf.Value": Any,
    "google.protobuf.ListValue": list[Any],
    "google.protobuf.FieldMask": str,
    "google.protobuf.Any": dict[str, Any],
    "google.protobuf.Empty": dict[str, Any],
    "google.protobuf.StringValue": str | None,
    "google.protobuf.BoolValue": bool | None,
    "google.protobuf.DoubleValue": float | None,
    "google.protobuf.FloatValue": float | None,
    "google.protobuf.Int32Value": int | None,
    "google.protobuf.UInt32Value": int | None,
    "google.protobuf.Int64Value": Annotated[str, WithJsonSchema(INT64_SCHEMA)] | None,
    "google.protobuf.UInt64Value": Annotated[str, WithJsonSchema(INT64_SCHEMA)] | None,
    "google.protobuf.BytesValue": Annotated[str, WithJsonSchema(BYTES_SCHEMA)] | None,
}
WELL_KNOWN_INPUT: dict[str, Any] = {
    "google.protobuf.Timestamp": Annotated[
        AwareDatetime,
        WithJsonSchema(
            {"type": "string", "format": "date-time", "maxLength": bounds.SHAPED_STRING_MAX_LENGTH}
        ),
    ],
    "google.protobuf.Duration": Annotated[
        str,
        MaxLen(bounds.SHAPED_STRING_MAX_LENGTH),
        WithJsonSchema(_bounded(DURATION_SCHEMA, bounds.SHAPED_STRING_MAX_LENGTH)),
    ],
    "google.protobuf.Struct": Annotated[dict[str, Any], MaxLen(bounds.MAP_MAX_PROPERTIES), _JSON],
    "google.protobuf.Value": Annotated[Any, _JSON],
    "google.protobuf.ListValue": Annotated[list[Any], MaxLen(bounds.ARRAY_MAX_ITEMS), _JSON],
    "google.protobuf.FieldMask": _text(bounds.FIELD_MASK_MAX_LENGTH),
    "google.protobuf.Any": Annotated[dict[str, Any], MaxLen(bounds.MAP_MAX_PROPERTIES), _JSON],
    "google.protobuf.Empty": Annotated[dict[str, Any], MaxLen(0)],
    "google.protobuf.DoubleValue": float | None,
    "google.protobuf.FloatValue": float | None,
    "google.protobuf.BytesValue": _BYTES_INPUT | None,
    "google.protobuf.StringValue": _text(bounds.STRING_MAX_LENGTH) | None,
    "google.protobuf.BoolValue": Annotated[bool, Strict()] | None,
    "google.protobuf.Int32Value": Annotated[int, Strict(), Ge(-(2**31)), Le(2**31 - 1)] | None,
    "google.protobuf.UInt32Value": Annotated[int, Strict(), Ge(0), Le(2**32 - 1)] | None,
    "google.protobuf.Int64Value": _int64_input(FD.TYPE_INT64) | None,
    "google.protobuf.UInt64Value": _int64_input(FD.TYPE_UINT64) | None,
}

OUTPUT = "output"
INPUT = "input"


def is_map(field: FieldDescriptor) -> bool:
    return bool(field.message_type and field.message_type.GetOptions().map_entry)


def is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def enum_names(field: FieldDescriptor) -> list[str]:
    return [v.name for v in field.enum_type.values]


def enum_literal(field: FieldDescriptor, *, skip_unspecified: bool = False) -> Any:
    names = enum_names(field)
    if skip_unspecified:
        names = [n for n in names if not n.endswith("_UNSPECIFIED")] or names
    return Literal[tuple(names)]  # type: ignore[valid-type]


def _python_name(name: str) -> str:
    """A Python attribute name for a proto field that would clash with Python or pydantic."""
    if (
        keyword.iskeyword(name)
        or name.startswith("_")
        or name.startswith("model_")
        or hasattr(BaseModel, name)
    ):
        return f"field_{name}"
    return name


def _camel(part: str) -> str:
    return part[:1].upper() + part[1:]


class SchemaRegistry:
    """Builds and caches the pydantic model of every message the routes use; one per process."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, frozenset[str]], type[BaseModel]] = {}
        self._names: dict[str, str] = {}  # model name -> the key it was given to, to keep names unique
        self._namespace: dict[str, Any] = {}
        self._building: dict[tuple[str, str, frozenset[str]], str] = {}
        self._unresolved: list[type[BaseModel]] = []

    # ------------------------------------------------------------ names

    def _name(self, desc: Descriptor, suffix: str, key: tuple[str, str, frozenset[str]]) -> str:
        """`User`, or `IdentityV1User` if another message already took `User` (services named first keep the
        short names, so adding a service never renames what partners already generated)."""
        owner = repr(key)
        candidates = [desc.name + suffix]
        package = [p for p in desc.file.package.split(".") if p and p != "crm"]
        candidates.append("".join(_camel(p) for p in package) + desc.name + suffix)
        for n in range(2, 100):
            candidates.append(f"{candidates[1]}{n}")
        for name in candidates:
            if self._names.get(name, owner) == owner:
                self._names[name] = owner
                return name
        raise RuntimeError(f"cannot name a model for {desc.full_name}")

    # ------------------------------------------------------------ public

    def output(self, desc: Descriptor) -> type[BaseModel]:
        return self._build(desc, OUTPUT)

    def input(
        self, desc: Descriptor, *, exclude: frozenset[str] = frozenset(), suffix: str = "Input"
    ) -> type[BaseModel]:
        """The input model of `desc`, without the fields in `exclude` (e.g. ones taken from the path)."""
        return self._build(desc, INPUT, exclude=exclude, suffix=suffix)

    def output_with(self, desc: Descriptor, extra: list[FieldDescriptor]) -> type[BaseModel]:
        """The output model of `desc` plus fields of another message (see `Route.also`), e.g.
        `AccountWithDuplicates`: an account with the `duplicates` of its create answer."""
        key = (desc.full_name, OUTPUT + "+" + ",".join(f.full_name for f in extra), frozenset())
        if key not in self._models:
            self.output(desc)
            name = self._name(desc, "With" + "".join(_camel(f.name) for f in extra), key)
            fields = {_python_name(f.name): self._field(f, OUTPUT) for f in (*desc.fields, *extra)}
            model = create_model(
                name,
                __config__=ConfigDict(title=name, extra="ignore", populate_by_name=True),
                __doc__=f"protobuf `{desc.full_name}` with "
                + ", ".join(f"`{f.name}` of `{f.containing_type.full_name}`" for f in extra),
                **fields,
            )
            self._models[key] = model
            self._namespace[name] = model
        return self._models[key]

    def models_of(self, full_names: set[str]) -> list[tuple[str, str, str]]:
        """The models built so far from these messages: (model name, message, kind), kind being "output"
        (answers), "input" (create bodies) or "update" (PATCH bodies). Pages refer to their items' models."""
        out = []
        for (full_name, mode, _), model in self._models.items():
            if full_name not in full_names or mode == "page":
                continue
            if mode.startswith(OUTPUT):
                kind = "output"
            else:
                kind = "update" if mode.endswith("Update") else "input"
            out.append((model.__name__, full_name, kind))
        return out

    def page(self, item_desc: Descriptor) -> type[BaseModel]:
        """`{"items": [Item], "next_cursor": str | null}` for a list route."""
        key = (item_desc.full_name, "page", frozenset())
        if key not in self._models:
            item = self.output(item_desc)
            name = self._name(item_desc, "Page", key)
            model = create_model(
                name,
                __config__=ConfigDict(title=name),
                __doc__=f"One page of {item.__name__}; pass `next_cursor` as `cursor` for the next (null at the end).",
                items=(list[item], ...),  # type: ignore[valid-type]
                next_cursor=(str | None, ...),
            )
            self._models[key] = model
            self._namespace[name] = model
        return self._models[key]

    def field_annotation(self, field: FieldDescriptor, mode: str) -> Any:
        """The Python type of one field's JSON value (not counting presence)."""
        if is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if mode != INPUT:
                return dict[str, self._single(value_field, mode)]  # type: ignore[misc]
            key = _text(bounds.STRING_MAX_LENGTH)
            return Annotated[dict[key, self._single(value_field, mode)], MaxLen(bounds.MAP_MAX_PROPERTIES)]  # type: ignore[misc,valid-type]
        single = self._single(field, mode)
        if is_repeated(field):
            if mode == INPUT:
                return Annotated[list[single], MaxLen(bounds.ARRAY_MAX_ITEMS)]  # type: ignore[valid-type]
            return list[single]  # type: ignore[valid-type]
        return single

    # ------------------------------------------------------------ building

    def _single(self, field: FieldDescriptor, mode: str) -> Any:
        t = field.type
        if t == FD.TYPE_MESSAGE or t == FD.TYPE_GROUP:
            wkt = (WELL_KNOWN_INPUT if mode == INPUT else WELL_KNOWN_OUTPUT).get(field.message_type.full_name)
            if wkt is not None:
                return wkt
            return self._build(field.message_type, mode)
        if t == FD.TYPE_ENUM:
            return enum_literal(field)
        if t == FD.TYPE_STRING:
            return _text(bounds.string_max_length(field)) if mode == INPUT else str
        if t == FD.TYPE_BOOL:
            return Annotated[bool, Strict()] if mode == INPUT else bool
        if t == FD.TYPE_BYTES:
            return _BYTES_INPUT if mode == INPUT else Annotated[str, WithJsonSchema(BYTES_SCHEMA)]
        if t in INT64_TYPES:
            return _int64_input(t) if mode == INPUT else _int64_output()
        if t in INT32_BOUNDS:
            low, high = INT32_BOUNDS[t]
            return Annotated[int, Strict(), Ge(low), Le(high)] if mode == INPUT else int
        if t in FLOAT_TYPES:
            return float
        raise TypeError(f"unsupported field type {t} of {field.full_name}")

    def _build(
        self, desc: Descriptor, mode: str, *, exclude: frozenset[str] = frozenset(), suffix: str | None = None
    ) -> Any:
        key = (desc.full_name, mode + (suffix or ""), exclude)
        if key in self._models:
            return self._models[key]
        if key in self._building:  # a recursive message: refer to it by name, resolve when done
            return ForwardRef(self._building[key])
        if suffix is None:
            suffix = "Input" if mode == INPUT else ""
        name = self._name(desc, suffix, key)
        self._building[key] = name
        try:
            fields: dict[str, Any] = {}
            for field in desc.fields:
                if field.name in exclude:
                    continue
                fields[_python_name(field.name)] = self._field(field, mode)
            validators = {}
            oneofs = [
                tuple(f.name for f in o.fields if f.name not in exclude)
                for o in desc.oneofs
                if not (len(o.fields) == 1 and o.name.startswith("_"))  # proto3 `optional`, not a real oneof
            ]
            if mode == INPUT and oneofs:
                validators["_one_of_each_oneof"] = _oneof_validator([o for o in oneofs if len(o) > 1])
            config = ConfigDict(
                title=name,
                extra="forbid" if mode == INPUT else "ignore",
                populate_by_name=True,
                ser_json_timedelta="iso8601",
            )
            model = create_model(
                name,
                __config__=config,
                __doc__=f"protobuf `{desc.full_name}`" + (" (request body)" if mode == INPUT else ""),
                __validators__=validators or None,
                **fields,
            )
        finally:
            del self._building[key]
        self._models[key] = model
        self._namespace[name] = model
        if not model.__pydantic_complete__:
            self._unresolved.append(model)
        if not self._building and self._unresolved:
            for pending in self._unresolved:
                pending.model_rebuild(force=True, _types_namespace=self._namespace)
            self._unresolved.clear()
        return model

    def _field(self, field: FieldDescriptor, mode: str) -> tuple[Any, Any]:
        annotation = self.field_annotation(field, mode)
        alias = field.name if _python_name(field.name) != field.name else None
        if mode == INPUT:
            return (annotation | None, Field(None, alias=alias))  # type: ignore[operator]
        if field.has_presence and not is_repeated(field):
            # Left out of the JSON when unset: optional, and never null.
            return (annotation, Field(None, alias=alias, json_schema_extra=_drop_default))
        return (annotation, Field(..., alias=alias))


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _oneof_validator(groups: list[tuple[str, ...]]) -> Any:
    def check(model: BaseModel) -> BaseModel:
        present = model.model_fields_set
        for group in groups:
            chosen = [g for g in group if _python_name(g) in present]
            if len(chosen) > 1:
                raise ValueError(f"only one of {', '.join(group)} may be set, got {', '.join(chosen)}")
        return model

    return model_validator(mode="after")(check)


REGISTRY = SchemaRegistry()
