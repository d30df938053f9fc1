"""Pydantic models made from protobuf descriptors, so the OpenAPI document *is* the proto contract.

Nothing here is written per message: a service's .proto is the single source of every field name, type,
description (its comments) and behaviour (`google.api.field_behavior`). The JSON shape is the one
docs/api-style.md describes, with the proto field names kept (snake_case):

| proto                            | JSON                                                              |
|----------------------------------|-------------------------------------------------------------------|
| string                           | string; an empty value is `null`                                  |
| bool, int32, int64, float…       | boolean / number (64-bit integers too: versions, counts, sizes)   |
| enum                             | a short lower-case word (`LEAD_SOURCE_EVENT` → `event`); unset: `null` |
| bytes                            | base64 string                                                     |
| repeated T / map<K, V>           | array / object (never null; empty when there is nothing)          |
| message                          | object, or `null` when unset                                      |
| google.protobuf.Timestamp        | RFC 3339 string, e.g. "2025-01-31T09:30:00Z", or `null`           |
| Struct / Value / ListValue       | any JSON object / value / array                                   |

Money and other exact decimals are decimal strings in the contracts (`"1234.50"`) and stay strings.

Three kinds of model exist for a message:
- output: what answers carry. Every field is always present; what is unset is `null` (see above).
- input: a create body or a nested object in a body. OUTPUT_ONLY fields are absent; REQUIRED ones are
  required; the others may be left out or `null`; unknown fields are refused (422 naming them); at most one
  field of a oneof may be set.
- patch: an update body: only the fields to change; OUTPUT_ONLY and IMMUTABLE fields are absent; `null`
  clears a field.

Input models bound every value (`bounds.py`): strings have a maxLength, arrays maxItems, maps and free-form
objects maxProperties, integers their type's range; a value over its bound is a 422 naming the field.

Models are built once per message (and kind) and cached: nothing is built on the request path.
"""

from __future__ import annotations

import datetime as dt
import keyword
from typing import Annotated, Any, ForwardRef, Literal

from annotated_types import Ge, Le, MaxLen, MinLen
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

from crm_gateway import bounds, contract

FD = FieldDescriptor

INT64_TYPES = {FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64, FD.TYPE_UINT64, FD.TYPE_FIXED64}
INT_BOUNDS = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    # JSON numbers are exact up to 2^53: 64-bit integers are bounded there (versions and counts never near it).
    FD.TYPE_INT64: (-(2**53), 2**53),
    FD.TYPE_SINT64: (-(2**53), 2**53),
    FD.TYPE_SFIXED64: (-(2**53), 2**53),
    FD.TYPE_UINT64: (0, 2**53),
    FD.TYPE_FIXED64: (0, 2**53),
}
INT32_BOUNDS = {k: v for k, v in INT_BOUNDS.items() if k not in INT64_TYPES}
FLOAT_TYPES = {FD.TYPE_FLOAT, FD.TYPE_DOUBLE}

BYTES_SCHEMA = {"type": "string", "format": "byte"}
DURATION_SCHEMA = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$", "examples": ["1.5s"]}
TIMESTAMP = "google.protobuf.Timestamp"

OUTPUT = "output"
INPUT = "input"
PATCH = "patch"


def _bounded(schema: dict[str, Any], max_length: int) -> dict[str, Any]:
    return {**schema, "maxLength": max_length}


def _text(max_length: int, min_length: int = 0) -> Any:
    if min_length:
        return Annotated[str, Strict(), MinLen(min_length), MaxLen(max_length)]
    return Annotated[str, Strict(), MaxLen(max_length)]


def int_input(ftype: int) -> Any:
    low, high = INT_BOUNDS[ftype]
    return Annotated[int, Strict(), Ge(low), Le(high)]


_JSON = AfterValidator(bounds.check_json)
_BYTES_INPUT = Annotated[
    str, MaxLen(bounds.BYTES_MAX_LENGTH), WithJsonSchema(_bounded(BYTES_SCHEMA, bounds.BYTES_MAX_LENGTH))
]
TIMESTAMP_INPUT = Annotated[
    AwareDatetime,
    WithJsonSchema({"type": "string", "format": "date-time", "maxLength": bounds.SHAPED_STRING_MAX_LENGTH}),
]

WELL_KNOWN_OUTPUT: dict[str, Any] = {
    TIMESTAMP: dt.datetime,
    "google.protobuf.Duration": Annotated[str, WithJsonSchema(DURATION_SCHEMA)],
    "google.protobuf.Struct": dict[str, Any],
    "google.protobuf.Value": Any,
    "google.protobuf.ListValue": list[Any],
    "google.protobuf.FieldMask": str,
    "google.protobuf.Empty": dict[str, Any],
}
WELL_KNOWN_INPUT: dict[str, Any] = {
    TIMESTAMP: TIMESTAMP_INPUT,
    "google.protobuf.Duration": Annotated[
        str,
        MaxLen(bounds.SHAPED_STRING_MAX_LENGTH),
        WithJsonSchema(_bounded(DURATION_SCHEMA, bounds.SHAPED_STRING_MAX_LENGTH)),
    ],
    "google.protobuf.Struct": Annotated[dict[str, Any], MaxLen(bounds.MAP_MAX_PROPERTIES), _JSON],
    "google.protobuf.Value": Annotated[Any, _JSON],
    "google.protobuf.ListValue": Annotated[list[Any], MaxLen(bounds.ARRAY_MAX_ITEMS), _JSON],
    "google.protobuf.FieldMask": _text(bounds.FIELD_MASK_MAX_LENGTH),
    "google.protobuf.Empty": Annotated[dict[str, Any], MaxLen(0)],
}


def is_map(field: FieldDescriptor) -> bool:
    return bool(field.message_type and field.message_type.GetOptions().map_entry)


def is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def enum_literal(field: FieldDescriptor) -> Any:
    """The enum's JSON words; documented as `enum` (a one-word enum too, which pydantic would make a const)."""
    names = contract.enum_names(field.enum_type)
    return Annotated[Literal[names], WithJsonSchema({"type": "string", "enum": list(names)})]  # type: ignore[valid-type]


def nullable_in_output(field: FieldDescriptor) -> bool:
    """Whether an answer may carry `null` for this field (see the table above)."""
    if is_repeated(field):
        return False
    if field.type in (FD.TYPE_STRING, FD.TYPE_BYTES, FD.TYPE_ENUM, FD.TYPE_MESSAGE):
        return True
    return bool(field.has_presence)


def excluded(field: FieldDescriptor, mode: str) -> bool:
    """Whether a field has no place in a body of this kind (its behaviour says the server owns it)."""
    behaviour = contract.behaviours(field)
    if mode == OUTPUT:
        return contract.INPUT_ONLY in behaviour
    if contract.OUTPUT_ONLY in behaviour:
        return True
    return mode == PATCH and contract.IMMUTABLE in behaviour


def is_required(field: FieldDescriptor, mode: str) -> bool:
    return mode == INPUT and contract.REQUIRED in contract.behaviours(field)


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


SUFFIX = {OUTPUT: "", INPUT: "Input", PATCH: "Patch"}


class SchemaRegistry:
    """Builds and caches the pydantic model of every message the routes use; one per process."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, frozenset[str]], Any] = {}
        self._names: dict[str, str] = {}  # model name -> the key it was given to, to keep names unique
        self._namespace: dict[str, Any] = {}
        self._building: dict[tuple[str, str, frozenset[str]], str] = {}
        self._unresolved: list[type[BaseModel]] = []

    # ------------------------------------------------------------ names

    def _name(self, desc: Descriptor, mode: str, key: tuple[str, str, frozenset[str]]) -> str:
        """`Account`, `AccountInput`, `AccountPatch`; a request body keeps its message's name
        (`ConvertLeadRequest`). Two messages of one name in two packages: the later one gets its package."""
        owner = repr(key)
        base = desc.name
        suffix = SUFFIX[mode]
        if base.endswith(("Request", suffix)) and suffix:
            suffix = ""
        candidates = [base + suffix]
        package = [p for p in desc.file.package.split(".") if p and p not in ("crm", "v1")]
        candidates.append("".join(_camel(p) for p in package) + base + suffix)
        if key[2]:  # the same message without some fields (taken from the path)
            candidates = [c + "Body" for c in candidates] + candidates
        for n in range(2, 100):
            candidates.append(f"{candidates[-1]}{n}")
        for name in candidates:
            if self._names.get(name, owner) == owner:
                self._names[name] = owner
                return name
        raise RuntimeError(f"cannot name a model for {desc.full_name}")

    # ------------------------------------------------------------ public

    def output(self, desc: Descriptor) -> Any:
        return self._build(desc, OUTPUT)

    def input(self, desc: Descriptor, *, exclude: frozenset[str] = frozenset()) -> Any:
        """The create (or request body) model of `desc`, without the fields in `exclude` (e.g. the path's)."""
        return self._build(desc, INPUT, exclude=exclude)

    def patch(self, desc: Descriptor) -> Any:
        return self._build(desc, PATCH)

    def models_of(self, full_names: set[str]) -> list[tuple[str, str, str]]:
        """The models built so far from these messages: (model name, message, kind)."""
        out = []
        for (full_name, mode, _), model in self._models.items():
            if full_name not in full_names or mode == "page":
                continue
            out.append((model.__name__, full_name, mode))
        return out

    def page(self, item_desc: Descriptor) -> Any:
        """`{"items": [Item], "next_cursor": str | null}` for a list route."""
        key = (item_desc.full_name, "page", frozenset())
        if key not in self._models:
            item = self.output(item_desc)
            name = item.__name__ + "Page"
            self._names[name] = repr(key)
            model = create_model(
                name,
                __config__=ConfigDict(title=name),
                __doc__=f"One page of {item.__name__}, in the list's order.",
                items=(list[item], Field(..., description="The page's items.")),  # type: ignore[valid-type]
                next_cursor=(
                    str | None,
                    Field(..., description="Pass as `cursor` for the next page; null on the last page."),
                ),
            )
            self._models[key] = model
            self._namespace[name] = model
        return self._models[key]

    def field_annotation(self, field: FieldDescriptor, mode: str) -> Any:
        """The Python type of one field's JSON value (not counting null)."""
        if is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if mode == OUTPUT:
                return dict[str, self._single(value_field, mode)]  # type: ignore[misc]
            key = _text(bounds.STRING_MAX_LENGTH)
            return Annotated[dict[key, self._single(value_field, mode)], MaxLen(bounds.MAP_MAX_PROPERTIES)]  # type: ignore[misc,valid-type]
        single = self._single(field, mode)
        if is_repeated(field):
            if mode != OUTPUT:
                return Annotated[list[single], MaxLen(bounds.ARRAY_MAX_ITEMS)]  # type: ignore[valid-type]
            return list[single]  # type: ignore[valid-type]
        return single

    # ------------------------------------------------------------ building

    def _single(self, field: FieldDescriptor, mode: str, *, required: bool = False) -> Any:
        t = field.type
        if t == FD.TYPE_MESSAGE or t == FD.TYPE_GROUP:
            wkt = (WELL_KNOWN_OUTPUT if mode == OUTPUT else WELL_KNOWN_INPUT).get(
                field.message_type.full_name
            )
            if wkt is not None:
                return wkt
            if field.message_type.full_name.startswith("google.protobuf."):
                raise TypeError(f"{field.full_name}: {field.message_type.full_name} has no JSON mapping here")
            # A nested object of a body is a whole object: the input model (a PATCH replaces it whole).
            return self._build(field.message_type, OUTPUT if mode == OUTPUT else INPUT)
        if t == FD.TYPE_ENUM:
            return enum_literal(field)
        if t == FD.TYPE_STRING:
            if mode == OUTPUT:
                return str
            return _text(bounds.string_max_length(field), 1 if required else 0)
        if t == FD.TYPE_BOOL:
            return Annotated[bool, Strict()] if mode != OUTPUT else bool
        if t == FD.TYPE_BYTES:
            return _BYTES_INPUT if mode != OUTPUT else Annotated[str, WithJsonSchema(BYTES_SCHEMA)]
        if t in INT_BOUNDS:
            return int_input(t) if mode != OUTPUT else int
        if t in FLOAT_TYPES:
            return float
        raise TypeError(f"unsupported field type {t} of {field.full_name}")

    def _build(self, desc: Descriptor, mode: str, *, exclude: frozenset[str] = frozenset()) -> Any:
        key = (desc.full_name, mode, exclude)
        if key in self._models:
            return self._models[key]
        if key in self._building:  # a recursive message: refer to it by name, resolve when done
            return ForwardRef(self._building[key])
        name = self._name(desc, mode, key)
        self._building[key] = name
        try:
            fields: dict[str, Any] = {}
            for field in desc.fields:
                if field.name in exclude or excluded(field, mode):
                    continue
                fields[_python_name(field.name)] = self._field(field, mode)
            validators = {}
            oneofs = [
                tuple(f.name for f in o.fields if f.name not in exclude)
                for o in desc.oneofs
                if not (len(o.fields) == 1 and o.name.startswith("_"))  # proto3 `optional`, not a real oneof
            ]
            if mode != OUTPUT and oneofs:
                validators["_one_of_each_oneof"] = _oneof_validator([o for o in oneofs if len(o) > 1])
            config = ConfigDict(
                title=name,
                extra="ignore" if mode == OUTPUT else "forbid",
                populate_by_name=True,
            )
            doc = contract.comment(desc.full_name) or f"A {_words(desc.name)}."
            if mode == PATCH:
                doc += "\n\nAn update: only the fields to change; `null` clears a field."
            model = create_model(
                name,
                __config__=config,
                __doc__=doc,
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
        required = is_required(field, mode)
        annotation = (
            self._single(field, mode, required=True)
            if required and not is_repeated(field) and not is_map(field)
            else self.field_annotation(field, mode)
        )
        if required and (is_repeated(field) or is_map(field)):
            annotation = Annotated[annotation, MinLen(1)]
        alias = field.name if _python_name(field.name) != field.name else None
        description = describe(field)
        if mode != OUTPUT:
            if required:
                return (annotation, Field(..., alias=alias, description=description))
            return (annotation | None, Field(None, alias=alias, description=description))  # type: ignore[operator]
        extra = {"readOnly": True} if contract.OUTPUT_ONLY in contract.behaviours(field) else None
        if nullable_in_output(field):
            annotation = annotation | None
        return (annotation, Field(..., alias=alias, description=description, json_schema_extra=extra))


def _words(name: str) -> str:
    return "".join(" " + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def describe(field: FieldDescriptor) -> str:
    """A field's description: its proto comment, or words made from its name and behaviour."""
    text = contract.field_comment(field)
    if not text:
        text = _default_description(field)
    behaviour = contract.behaviours(field)
    notes = []
    if contract.OUTPUT_ONLY in behaviour:
        notes.append("Set by the server.")
    elif contract.IMMUTABLE in behaviour:
        notes.append("Set when created; cannot be changed.")
    if field.type == FD.TYPE_ENUM:
        notes.append("One of: " + ", ".join(f"`{n}`" for n in contract.enum_names(field.enum_type)) + ".")
    return " ".join([text, *notes]).strip()


def _default_description(field: FieldDescriptor) -> str:
    name = field.name
    if name == "id":
        return f"The {_words(field.containing_type.name)}'s id."
    if name == "version":
        return "Incremented by every change; sent as the ETag."
    if name == "created_at":
        return "When it was created."
    if name == "updated_at":
        return "When it last changed."
    if name.endswith("_ids"):
        return f"The ids of the {name[:-4].replace('_', ' ')}s."
    if name.endswith("_id"):
        return f"The id of the {name[:-3].replace('_', ' ')}."
    if name.endswith("_at"):
        return f"When {name[:-3].replace('_', ' ')}."
    return _words(name).replace("_", " ").strip().capitalize() + "."


def _oneof_validator(groups: list[tuple[str, ...]]) -> Any:
    def check(model: BaseModel) -> BaseModel:
        present = {k for k in model.model_fields_set if getattr(model, k) is not None}
        for group in groups:
            chosen = [g for g in group if _python_name(g) in present]
            if len(chosen) > 1:
                raise ValueError(f"only one of {', '.join(group)} may be set, got {', '.join(chosen)}")
        return model

    return model_validator(mode="after")(check)


REGISTRY = SchemaRegistry()
