"""REST → gRPC without hand-copied fields: a declarative route table, compiled once into FastAPI routes.

A service declares only what REST needs to know that its .proto does not say:

    IDENTITY = ServiceRoutes(
        name="identity",                      # its address comes from IDENTITY_SERVICE_ADDR
        service=identity_pb2.DESCRIPTOR.services_by_name["IdentityService"],
        routes=[
            Route("POST", "/users", "InviteUser", status=201, location="/users/{user.id}"),
            Route("GET", "/users", "ListUsers", query={"q": "query"}),
            Route("GET", "/users/{id}", "GetUser", unwrap="user"),
            Route("PATCH", "/users/{id}", "UpdateUser", unwrap="user", read_only=("status",)),
            Route("DELETE", "/departments/{id}", "DeleteDepartment", status=204),
        ],
    )

Everything else follows from the request and response messages:

- `{name}` in the path fills the request field `name`.
- A request field `page` (crm.common.v1.PageRequest) makes a list route: `limit` (1..200, default 50) and
  `cursor` query parameters, answer `{"items": [...], "next_cursor": "..." | null}` from the response's
  `items` and `next_cursor`.
- A request field `update_mask` (FieldMask) makes a PATCH: the body is the one message field of the request
  (e.g. `user`), holding only the fields to change; the mask is the body's top-level keys (a `null` clears a
  field). `id`, `version`, `created_at`, `updated_at` and the route's `read_only` fields are not accepted.
- A request field `expected_version` is filled from `If-Match: "<version>"` (absent or `*`: no check).
- Other request fields are query parameters on GET and DELETE (named as in the proto, renamed by `query`),
  and the JSON body on POST/PUT.
- The answer is the response message, or only its field `unwrap`; a single object with a `version` field gets
  `ETag: "<version>"`; `status=204` answers no body. `also` names response fields shown beside an unwrapped
  object's own, e.g. `also=("duplicates",)` answers the account with its `duplicates` next to its fields.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, get_origin

import orjson
from annotated_types import MaxLen
from fastapi import Body, Header, Path, Query, Request
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel

from crm_gateway import bounds, schema
from crm_gateway.idempotency import Reply
from crm_gateway.problems import ProblemError

FD = FieldDescriptor
PAGE_REQUEST = "crm.common.v1.PageRequest"
FIELD_MASK = "google.protobuf.FieldMask"
TIMESTAMP = "google.protobuf.Timestamp"
# Fields the server owns; a PATCH body may not carry them.
SERVER_OWNED = frozenset({"id", "version", "created_at", "updated_at"})
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_PATH_PARAM = bounds.PATH_PARAM_MAX_LENGTH
MAX_QUERY_PARAM = bounds.QUERY_PARAM_MAX_LENGTH
TO_DICT = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    rpc: str
    status: int = 200
    # Answer with only this field of the response, e.g. "user" → the User object.
    unwrap: str | None = None
    # With `unwrap`: other fields of the response, shown as members of the unwrapped object's JSON.
    also: Sequence[str] = ()
    # Public query parameter name → request field, for names that read better in a URL ("q" → "query").
    query: Mapping[str, str] = field(default_factory=dict)
    # PATCH only: fields of the object a client may not change, beyond id/version/created_at/updated_at.
    read_only: Sequence[str] = ()
    # Takes no credential (sign-up, sign-in, key set, ...).
    public: bool = False
    # For 201: where the new object lives, with {dotted.paths} into the answer, relative to the prefix.
    location: str | None = None
    # The path is absolute (not under the API prefix), e.g. /.well-known/jwks.json.
    root: bool = False
    cache_control: str | None = None
    summary: str | None = None
    tag: str | None = None
    # The answer is a file of this media type (for the API docs), e.g. "application/pdf": the response's `content`
    # (bytes) is sent as is, with its `content_type` and, as an attachment, its `filename`.
    binary: str = ""


@dataclass(frozen=True)
class ServiceRoutes:
    """One service's REST face: its gRPC service descriptor and its routes."""

    name: str
    service: ServiceDescriptor
    routes: Sequence[Route]
    prefix: str = "/api/v1"


@dataclass(frozen=True)
class QueryParam:
    public: str
    field: FieldDescriptor
    annotation: Any


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _message_class(desc: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


class RoutePlan:
    """A route compiled against its gRPC method: everything decided at start-up, nothing per request."""

    def __init__(self, service: ServiceRoutes, route: Route):
        self.service = service
        self.route = route
        self.http_method = route.method.upper()
        method: MethodDescriptor | None = service.service.methods_by_name.get(route.rpc)
        if method is None:
            raise ValueError(f"{service.service.full_name} has no method {route.rpc}")
        self.method = method
        self.grpc_path = f"/{service.service.full_name}/{method.name}"
        self.request_cls = _message_class(method.input_type)
        self.response_cls = _message_class(method.output_type)
        self.path = route.path if route.root else service.prefix.rstrip("/") + route.path
        self.status = route.status
        self.public = route.public
        self.operation_id = _snake(route.rpc)
        self.idempotent = self.http_method == "POST"
        req = method.input_type
        fields = req.fields_by_name

        self.path_fields = re.findall(r"{(\w+)}", route.path)
        for name in self.path_fields:
            f = fields.get(name)
            if f is None or f.type not in (FD.TYPE_STRING, FD.TYPE_INT32, FD.TYPE_INT64) or f.is_repeated:
                raise ValueError(
                    f"{route.rpc}: path parameter {{{name}}} must be a scalar field of the request"
                )
        used = set(self.path_fields)

        page = fields.get("page")
        self.is_list = bool(page and page.message_type and page.message_type.full_name == PAGE_REQUEST)
        if self.is_list:
            used.add("page")
            out = method.output_type.fields_by_name
            if "items" not in out or not out["items"].is_repeated or "next_cursor" not in out:
                raise ValueError(f"{route.rpc}: a list response needs `repeated items` and `next_cursor`")

        ev = fields.get("expected_version")
        self.if_match = ev is not None and self.http_method in ("PATCH", "PUT", "DELETE")
        if ev is not None:
            used.add("expected_version")

        # The body.
        self.body_model: type[BaseModel] | None = None
        self.patch_field: str | None = None
        mask = fields.get("update_mask")
        if mask is not None and mask.message_type and mask.message_type.full_name == FIELD_MASK:
            used.add("update_mask")
            targets = [f for f in req.fields if f.name not in used and f.type == FD.TYPE_MESSAGE]
            if len(targets) != 1:
                raise ValueError(
                    f"{route.rpc}: an update needs exactly one message field besides update_mask"
                )
            self.patch_field = targets[0].name
            used.add(self.patch_field)
            exclude = frozenset(SERVER_OWNED | set(route.read_only)) & set(
                targets[0].message_type.fields_by_name
            )
            self.body_model = schema.REGISTRY.input(targets[0].message_type, exclude=exclude, suffix="Update")
        rest = [f for f in req.fields if f.name not in used]

        self.query_params: list[QueryParam] = []
        renames = {v: k for k, v in route.query.items()}
        for k, v in route.query.items():
            if v not in fields:
                raise ValueError(f"{route.rpc}: query parameter {k} names no request field {v}")
        if self.http_method in ("GET", "DELETE"):
            for f in rest:
                self.query_params.append(
                    QueryParam(renames.get(f.name, f.name), f, _query_annotation(f, route))
                )
        elif rest and self.patch_field is None:
            self.body_model = schema.REGISTRY.input(req, exclude=frozenset(used), suffix="")
        elif rest:
            raise ValueError(f"{route.rpc}: fields {[f.name for f in rest]} have no place in a PATCH")

        # The answer.
        self.response_model: Any = None
        self.unwrap = route.unwrap
        self.also = tuple(route.also)
        self.binary = bool(route.binary)
        if self.binary:
            out = method.output_type.fields_by_name
            if (
                "content" not in out
                or out["content"].type != FD.TYPE_BYTES
                or any(f not in out or out[f].type != FD.TYPE_STRING for f in ("content_type", "filename"))
            ):
                raise ValueError(
                    f"{route.rpc}: a binary answer needs bytes content, content_type and filename"
                )
        elif self.status == 204:
            pass
        elif self.is_list:
            self.response_model = schema.REGISTRY.page(
                method.output_type.fields_by_name["items"].message_type
            )
        elif self.unwrap:
            f = method.output_type.fields_by_name.get(self.unwrap)
            if f is None or f.type != FD.TYPE_MESSAGE or f.is_repeated:
                raise ValueError(
                    f"{route.rpc}: unwrap={self.unwrap!r} is not a message field of the response"
                )
            wkt = schema.WELL_KNOWN_OUTPUT.get(f.message_type.full_name)
            self.response_model = wkt if wkt is not None else schema.REGISTRY.output(f.message_type)
            if self.also:
                out = method.output_type.fields_by_name
                for name in self.also:
                    if name not in out or name == self.unwrap or name in f.message_type.fields_by_name:
                        raise ValueError(
                            f"{route.rpc}: also={name!r} must be another field of the response, and not a "
                            f"field of {f.message_type.name}"
                        )
                self.response_model = schema.REGISTRY.output_with(
                    f.message_type, [out[name] for name in self.also]
                )
        else:
            self.response_model = schema.REGISTRY.output(method.output_type)
        answer_desc = (
            method.output_type.fields_by_name[self.unwrap].message_type if self.unwrap else method.output_type
        )
        self.has_etag = (
            self.status != 204
            and not self.is_list
            and not self.binary
            and "version" in answer_desc.fields_by_name
        )
        self.location = None
        if route.location:
            self.location = route.location if route.root else service.prefix.rstrip("/") + route.location
        self.signature = self._signature()

    # ------------------------------------------------------------ FastAPI's view

    def _signature(self) -> inspect.Signature:
        kw = inspect.Parameter.KEYWORD_ONLY
        params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
        req = self.method.input_type.fields_by_name
        for name in self.path_fields:
            annotation = str if req[name].type == FD.TYPE_STRING else int
            default = Path(max_length=MAX_PATH_PARAM) if annotation is str else Path()
            params.append(inspect.Parameter(name, kw, annotation=annotation, default=default))
        if self.is_list:
            params.append(
                inspect.Parameter(
                    "page__limit",
                    kw,
                    annotation=int,
                    default=Query(DEFAULT_LIMIT, alias="limit", ge=1, le=MAX_LIMIT, description="Page size."),
                )
            )
            params.append(
                inspect.Parameter(
                    "page__cursor",
                    kw,
                    annotation=str | None,
                    default=Query(
                        None,
                        alias="cursor",
                        max_length=MAX_QUERY_PARAM,
                        description="`next_cursor` of the previous page; absent for the first page.",
                    ),
                )
            )
        for q in self.query_params:
            params.append(
                inspect.Parameter(
                    f"query__{q.field.name}",
                    kw,
                    annotation=q.annotation | None,
                    default=Query(None, alias=q.public, **_query_limits(q.annotation)),
                )
            )
        if self.body_model is not None:
            params.append(inspect.Parameter("body__", kw, annotation=self.body_model, default=Body(...)))
        if self.if_match:
            params.append(
                inspect.Parameter(
                    "header__if_match",
                    kw,
                    annotation=str | None,
                    default=Header(
                        None,
                        alias="If-Match",
                        max_length=bounds.IF_MATCH_MAX_LENGTH,
                        description='The ETag last seen, e.g. `"3"`: the change fails with 412 if the object '
                        "changed since. Absent (or `*`): no check.",
                    ),
                )
            )
        if self.idempotent:
            params.append(
                inspect.Parameter(
                    "header__idempotency_key",
                    kw,
                    annotation=str | None,
                    default=Header(
                        None,
                        alias="Idempotency-Key",
                        max_length=bounds.IDEMPOTENCY_KEY_MAX_LENGTH,
                        description="Any unique string (e.g. a UUID): a retry with the same key and body gets the "
                        "first response again instead of running twice. Kept 24 h.",
                    ),
                )
            )
        return inspect.Signature(params)

    # ------------------------------------------------------------ request

    def build_request(self, values: dict[str, Any]) -> Message:
        msg = self.request_cls()
        body = values.get("body__")
        if body is not None:
            data = body.model_dump(mode="json", exclude_unset=True, by_alias=True)
            if self.patch_field is not None:
                if not data:
                    raise ProblemError(422, "empty_update", "the body names no field to change", errors=[])
                _parse(data, getattr(msg, self.patch_field))
                msg.update_mask.paths.extend(data.keys())
            else:
                _parse(data, msg)
        for name in self.path_fields:
            setattr(msg, name, values[name])
        if self.is_list:
            msg.page.limit = values["page__limit"]
            cursor = values.get("page__cursor")
            if cursor:
                msg.page.cursor = cursor
        for q in self.query_params:
            value = values.get(f"query__{q.field.name}")
            if value is None:
                continue
            f = q.field
            if f.type == FD.TYPE_ENUM:
                value = f.enum_type.values_by_name[value].number
            if f.type == FD.TYPE_MESSAGE:  # a Timestamp
                getattr(msg, f.name).FromDatetime(value)
            elif f.is_repeated:
                getattr(msg, f.name).extend(value)
            else:
                setattr(msg, f.name, value)
        if self.if_match:
            header = values.get("header__if_match")
            if header is not None:
                msg.expected_version = parse_if_match(header)
        return msg

    # ------------------------------------------------------------ answer

    def render(self, response: Message) -> Reply:
        if self.status == 204:
            return Reply(204, b"", {})
        if self.binary:
            name = re.sub(r"[^A-Za-z0-9._-]", "_", response.filename) or "download"  # type: ignore[attr-defined]
            return Reply(
                self.status,
                bytes(response.content),  # type: ignore[attr-defined]
                {
                    "content-type": response.content_type or "application/octet-stream",  # type: ignore[attr-defined]
                    "Content-Disposition": f'attachment; filename="{name}"',
                },
            )
        if self.is_list:
            data = json_format.MessageToDict(response, **TO_DICT)
            answer: Any = {"items": data.get("items", []), "next_cursor": data.get("next_cursor") or None}
        elif self.unwrap:
            answer = json_format.MessageToDict(getattr(response, self.unwrap), **TO_DICT)
            if self.also:
                whole = json_format.MessageToDict(response, **TO_DICT)
                answer.update({name: whole[name] for name in self.also if name in whole})
        else:
            answer = json_format.MessageToDict(response, **TO_DICT)
        headers: dict[str, str] = {}
        if self.has_etag:
            version = answer.get("version")
            if version is not None:
                headers["ETag"] = f'"{version}"'
        if self.location:
            headers["Location"] = expand_template(self.location, answer)
        if self.route.cache_control:
            headers["Cache-Control"] = self.route.cache_control
        return Reply(self.status, orjson.dumps(answer), headers)


def _parse(data: dict[str, Any], msg: Message) -> None:
    try:
        json_format.ParseDict(data, msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ProblemError(422, "validation_failed", f"invalid input: {exc}", errors=[]) from None


def parse_if_match(value: str) -> int:
    v = value.strip()
    if v == "*":
        return 0
    if len(v) >= 3 and v[0] == v[-1] == '"' and v[1:-1].isdigit() and len(v) < 22:
        return int(v[1:-1])
    raise ProblemError(
        400,
        "invalid_if_match",
        'If-Match must be one strong entity tag as given in ETag, e.g. "3" (with the quotes), or *',
    )


def expand_template(template: str, answer: Any) -> str:
    def lookup(m: re.Match[str]) -> str:
        value = answer
        for part in m.group(1).split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        return str(value)

    return re.sub(r"{([\w.]+)}", lookup, template)


def _query_annotation(f: FieldDescriptor, route: Route) -> Any:
    if f.type == FD.TYPE_MESSAGE:
        if f.message_type.full_name == TIMESTAMP and not f.is_repeated:
            return schema.WELL_KNOWN_INPUT[TIMESTAMP]
        raise ValueError(f"{route.rpc}: request field {f.name} cannot be a query parameter")
    if f.type == FD.TYPE_ENUM:
        single = schema.enum_literal(f, skip_unspecified=True)
    elif f.type == FD.TYPE_STRING:
        single = Annotated[str, MaxLen(MAX_QUERY_PARAM)] if f.is_repeated else str
    elif f.type == FD.TYPE_BOOL:
        single = bool
    elif f.type in schema.INT32_BOUNDS or f.type in schema.INT64_TYPES:
        single = int
    elif f.type in schema.FLOAT_TYPES:
        single = float
    else:
        raise ValueError(f"{route.rpc}: request field {f.name} cannot be a query parameter")
    return list[single] if f.is_repeated else single  # type: ignore[valid-type]


def _query_limits(annotation: Any) -> dict[str, Any]:
    if annotation is str:
        return {"max_length": MAX_QUERY_PARAM}
    if get_origin(annotation) is list:
        return {"max_length": bounds.ARRAY_MAX_ITEMS}
    return {}


def compile_routes(services: Sequence[ServiceRoutes]) -> list[RoutePlan]:
    plans = [RoutePlan(s, r) for s in services for r in s.routes]
    seen: dict[str, str] = {}
    for plan in plans:
        if plan.operation_id in seen:
            raise ValueError(f"two routes would share the operationId {plan.operation_id}")
        seen[plan.operation_id] = plan.path
    return plans
