"""REST → gRPC derived from the contracts: every route comes from a method's `google.api.http` rule.

The gateway holds no route table. A service is listed once (`crm_gateway.services`), and each of its methods
with an HTTP rule becomes a route; everything about the route follows from the rule, the request and response
messages and their `google.api.field_behavior` (docs/api-style.md says the same for a reader):

- `{name}` in the path fills the request field `name` (a scalar).
- A request field `page` (crm.common.v1.PageRequest) makes a list: `limit` (1..200, default 50) and `cursor`
  query parameters, answer `{"items": [...], "next_cursor": "..." | null}`.
- `body: "<field>"` with a `update_mask` in the request makes an update: the body holds only the fields to
  change (the mask is its top-level keys; `null` clears one); OUTPUT_ONLY and IMMUTABLE fields are refused.
- `body: "<field>"` otherwise is a create: the body is that object, flat; OUTPUT_ONLY fields are refused,
  REQUIRED ones must be there.
- `body: "*"`: the body holds the request's fields that are not in the path.
- Request fields not in the path or the body are query parameters (named as in the proto); REQUIRED ones are
  required parameters.
- `expected_version` is filled from `If-Match: "<version>"` (absent or `*`: no check).
- `response_body: "<field>"` answers that object (a google.protobuf.Struct: its JSON); otherwise the whole
  response. A response with no fields
  answers 204; one with `content` (bytes), `content_type` and `filename` answers that file.
- Status: 201 for a `Create…` method that answers an object with an `id` (with `Location` when
  `GET <path>/{id}` exists), 202 for such a `Start…` (a job), 204 for an empty answer, 200 otherwise. An answer with a `version` carries `ETag: "<version>"`.
- `(crm.common.v1.public)` takes no credential; `(crm.common.v1.cache_control)` sets Cache-Control.
- Summary and description are the method's proto comment; its tag is the path's first segment.

Client-streaming methods with a rule are uploads and server-streaming ones downloads (`crm_gateway.files`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_origin

import orjson
from annotated_types import Ge, Le, MaxLen
from fastapi import Body, Header, Path, Query, Request
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from crm_gateway import bounds, contract, jsonmap, schema
from crm_gateway.idempotency import Reply
from crm_gateway.problems import ProblemError

FD = FieldDescriptor
PAGE_REQUEST = "crm.common.v1.PageRequest"
FIELD_MASK = "google.protobuf.FieldMask"
TIMESTAMP = "google.protobuf.Timestamp"
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_PATH_PARAM = bounds.PATH_PARAM_MAX_LENGTH
MAX_QUERY_PARAM = bounds.QUERY_PARAM_MAX_LENGTH


@dataclass(frozen=True)
class Service:
    """A gRPC service behind the gateway: the name its address comes from (`<NAME>_SERVICE_ADDR`) and its
    descriptor. Its routes are its methods' HTTP rules."""

    name: str
    descriptor: ServiceDescriptor


@dataclass(frozen=True)
class QueryParam:
    field: FieldDescriptor
    annotation: Any


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _message_class(desc: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


def summary_of(method: MethodDescriptor) -> tuple[str, str]:
    """(summary, description) from the method's comment: its first sentence, then the rest."""
    text = contract.comment(method.full_name)
    if not text:
        words = re.sub(r"(?<!^)(?=[A-Z])", " ", method.name).lower()
        return words[:1].upper() + words[1:], ""
    first, _, rest = text.partition("\n\n")
    m = re.match(r"(.+?[.。])(\s|$)", first)
    if m and len(m.group(1)) < len(first):
        return m.group(1).rstrip("."), (first[m.end() :] + ("\n\n" + rest if rest else "")).strip()
    return first.rstrip("."), rest


def tag_of(path: str) -> str:
    parts = [p for p in path.split("/") if p and not p.startswith("{")]
    if parts[:2] == ["api", "v1"]:
        parts = parts[2:]
    return parts[0] if parts and not parts[0].startswith(".") else "auth"


def is_binary(desc: Descriptor) -> bool:
    f = desc.fields_by_name
    return (
        "content" in f
        and f["content"].type == FD.TYPE_BYTES
        and all(n in f and f[n].type == FD.TYPE_STRING for n in ("content_type", "filename"))
    )


class RoutePlan:
    """A route compiled against its gRPC method: everything decided at start-up, nothing per request."""

    def __init__(self, service: Service, method: MethodDescriptor, rule: contract.HttpRule):
        self.service = service
        self.method = method
        self.rule = rule
        self.rpc = method.name
        self.http_method = rule.verb
        self.path = rule.path
        self.grpc_path = f"/{service.descriptor.full_name}/{method.name}"
        self.request_cls = _message_class(method.input_type)
        self.response_cls = _message_class(method.output_type)
        self.public = contract.is_public(method)
        self.cache_control = contract.cache_control(method)
        self.operation_id = snake(method.name)
        self.summary, self.description = summary_of(method)
        self.tag = tag_of(self.path)
        self.idempotent = self.http_method == "POST"
        req = method.input_type
        fields = req.fields_by_name

        self.path_fields = re.findall(r"{(\w+)}", self.path)
        for name in self.path_fields:
            f = fields.get(name)
            if f is None or f.type not in (FD.TYPE_STRING, FD.TYPE_INT32, FD.TYPE_INT64) or f.is_repeated:
                raise ValueError(
                    f"{self.rpc}: path parameter {{{name}}} must be a scalar field of the request"
                )
        used = set(self.path_fields)

        page = fields.get("page")
        self.is_list = bool(page and page.message_type and page.message_type.full_name == PAGE_REQUEST)
        if self.is_list:
            used.add("page")
            out = method.output_type.fields_by_name
            if "items" not in out or not out["items"].is_repeated or "next_cursor" not in out:
                raise ValueError(f"{self.rpc}: a list response needs `repeated items` and `next_cursor`")

        ev = fields.get("expected_version")
        # Every method that changes something takes the version the caller saw: updates and deletes, and
        # custom methods such as a stage move or a merge (their body "*" must not silently drop it).
        self.if_match = ev is not None and self.http_method != "GET"
        if ev is not None:
            used.add("expected_version")

        # The body.
        self.body_model: Any = None
        self.body_field: str | None = None  # the request field the body fills ("" = the request itself)
        self.patch = False
        mask = fields.get("update_mask")
        has_mask = mask is not None and mask.message_type and mask.message_type.full_name == FIELD_MASK
        if rule.body == "*":
            if has_mask:
                raise ValueError(f"{self.rpc}: an update names its object as the body, not *")
            self.body_field = ""
        elif rule.body:
            target = fields.get(rule.body)
            if target is None or target.type != FD.TYPE_MESSAGE or target.is_repeated:
                raise ValueError(f"{self.rpc}: body {rule.body!r} is not a message field of the request")
            self.body_field = rule.body
            used.add(rule.body)
            if has_mask:
                used.add("update_mask")
                self.patch = True
                self.body_model = schema.REGISTRY.patch(target.message_type)
            else:
                self.body_model = schema.REGISTRY.input(target.message_type)
        elif has_mask:
            raise ValueError(f'{self.rpc}: an update needs `body: "<object>"`')
        if self.body_field == "":
            self.body_model = schema.REGISTRY.input(req, exclude=frozenset(used))
            used.update(f.name for f in req.fields)
        rest = [f for f in req.fields if f.name not in used]
        self.query_params = [QueryParam(f, _query_annotation(f, self.rpc)) for f in rest]

        # The answer.
        out_desc = method.output_type
        self.response_model: Any = None
        self.unwrap = rule.response_body or None
        self.binary = is_binary(out_desc)
        if self.unwrap:
            f = out_desc.fields_by_name.get(self.unwrap)
            if f is None or f.type != FD.TYPE_MESSAGE or f.is_repeated:
                raise ValueError(
                    f"{self.rpc}: response_body {self.unwrap!r} is not a message field of the response"
                )
            answer_desc = f.message_type
            # A free-form JSON answer (the JWKS, a google.protobuf.Struct) is that JSON, not the Struct's insides.
            free_form = schema.WELL_KNOWN_OUTPUT.get(answer_desc.full_name)
            self.response_model = free_form if free_form is not None else schema.REGISTRY.output(answer_desc)
        else:
            answer_desc = out_desc
            if self.is_list:
                self.response_model = schema.REGISTRY.page(out_desc.fields_by_name["items"].message_type)
            elif not self.binary and out_desc.fields:
                self.response_model = schema.REGISTRY.output(out_desc)
        # 201 and 202 say an object was made or a job started: the answer is it (it has an `id`). A Create… or
        # Start… answering no object (sign-in's tokens, a new TOTP secret) is done at once: 200.
        is_object = "id" in answer_desc.fields_by_name
        if not out_desc.fields:
            self.status = 204
        elif self.http_method == "POST" and is_object and self.rpc.startswith("Create"):
            self.status = 201
        elif self.http_method == "POST" and is_object and self.rpc.startswith("Start"):
            self.status = 202
        else:
            self.status = 200
        self.has_etag = (
            self.status != 204
            and not self.is_list
            and not self.binary
            and "version" in answer_desc.fields_by_name
        )
        self.location: str | None = None  # set by compile_routes: the GET route of what a create made
        self.signature = self._signature()

    # ------------------------------------------------------------ FastAPI's view

    def _signature(self) -> inspect.Signature:
        kw = inspect.Parameter.KEYWORD_ONLY
        params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
        req = self.method.input_type.fields_by_name
        for name in self.path_fields:
            f = req[name]
            if f.type == FD.TYPE_STRING:
                annotation: Any = str
                default = Path(max_length=MAX_PATH_PARAM, description=schema.describe(f))
            else:
                annotation = schema.int_input(f.type)
                default = Path(description=schema.describe(f))
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
                        pattern=r"^[A-Za-z0-9_-]+$",
                        description="`next_cursor` of the previous page (an opaque token); absent for the first "
                        "page. A cursor belongs to its list and its filters: used elsewhere it is a 422.",
                    ),
                )
            )
        for q in self.query_params:
            # A REQUIRED field is a required parameter (a string one not empty either).
            required = contract.REQUIRED in contract.behaviours(q.field)
            limits = _query_limits(q.annotation)
            if required and q.annotation is str:
                limits["min_length"] = 1
            params.append(
                inspect.Parameter(
                    f"query__{q.field.name}",
                    kw,
                    annotation=q.annotation if required else q.annotation | None,
                    default=Query(
                        ... if required else None,
                        alias=q.field.name,
                        description=schema.describe(q.field),
                        **limits,
                    ),
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
                        # Documented, not validated here: a malformed one is parse_if_match's 400 invalid_if_match.
                        json_schema_extra={"pattern": r'^(\*|"[0-9]{1,15}")$'},
                        description='The ETag last seen, e.g. `"3"` (with the quotes): the change fails with 412 if '
                        "the object changed since. Absent (or `*`): no check.",
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
                        min_length=1,
                        max_length=bounds.IDEMPOTENCY_KEY_MAX_LENGTH,
                        description="Any unique string of 1–255 characters (e.g. a UUID): a retry with the same "
                        "key and body gets the first response again instead of running twice. Kept 24 h.",
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
            if self.patch:
                if not data:
                    raise ProblemError(
                        422, "validation_failed", "the body names no field to change", errors=[]
                    )
                target = getattr(msg, self.body_field)  # type: ignore[arg-type]
                _fill(target, data)
                msg.update_mask.paths.extend(data.keys())  # type: ignore[attr-defined]
            elif self.body_field:
                target = getattr(msg, self.body_field)
                target.SetInParent()
                _fill(target, data)
            else:
                _fill(msg, data)
        for name in self.path_fields:
            setattr(msg, name, values[name])
        if self.is_list:
            msg.page.limit = values["page__limit"]  # type: ignore[attr-defined]
            cursor = values.get("page__cursor")
            if cursor:
                msg.page.cursor = cursor  # type: ignore[attr-defined]
        query = {}
        for q in self.query_params:
            value = values.get(f"query__{q.field.name}")
            if value is not None:
                query[q.field.name] = value
        if query:
            _fill(msg, query)
        if self.if_match:
            header = values.get("header__if_match")
            if header is not None:
                msg.expected_version = parse_if_match(header)  # type: ignore[attr-defined]
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
        answer = jsonmap.to_json(getattr(response, self.unwrap) if self.unwrap else response)
        headers: dict[str, str] = {}
        if self.has_etag:
            version = answer.get("version")
            if version is not None:
                headers["ETag"] = f'"{version}"'
        if self.location and answer.get("id"):
            headers["Location"] = self.location.replace("{id}", str(answer["id"]))
        if self.cache_control:
            headers["Cache-Control"] = self.cache_control
        return Reply(self.status, orjson.dumps(answer), headers)


def _fill(msg: Message, data: dict[str, Any]) -> None:
    try:
        jsonmap.fill(msg, data)
    except (KeyError, ValueError, TypeError) as exc:
        raise ProblemError(422, "validation_failed", f"invalid input: {exc}", errors=[]) from None


def parse_if_match(value: str) -> int:
    v = value.strip()
    if v == "*":
        return 0
    if len(v) >= 3 and v[0] == v[-1] == '"' and v[1:-1].isdigit() and len(v) < 18:
        return int(v[1:-1])
    raise ProblemError(
        400,
        "invalid_if_match",
        'If-Match must be one strong entity tag as given in ETag, e.g. "3" (with the quotes), or *',
    )


def _query_annotation(f: FieldDescriptor, rpc: str) -> Any:
    if f.type == FD.TYPE_MESSAGE:
        if f.message_type.full_name == TIMESTAMP and not f.is_repeated:
            return schema.TIMESTAMP_INPUT
        raise ValueError(f"{rpc}: request field {f.name} cannot be a query parameter")
    if f.type == FD.TYPE_ENUM:
        single: Any = schema.enum_literal(f)
    elif f.type == FD.TYPE_STRING:
        single = Annotated[str, MaxLen(MAX_QUERY_PARAM)] if f.is_repeated else str
    elif f.type == FD.TYPE_BOOL:
        single = bool
    elif f.type in schema.INT_BOUNDS:
        low, high = schema.INT_BOUNDS[f.type]
        single = Annotated[int, Ge(low), Le(high)]
    elif f.type in schema.FLOAT_TYPES:
        single = float
    else:
        raise ValueError(f"{rpc}: request field {f.name} cannot be a query parameter")
    return list[single] if f.is_repeated else single  # type: ignore[valid-type]


def _query_limits(annotation: Any) -> dict[str, Any]:
    if annotation is str:
        return {"max_length": MAX_QUERY_PARAM}
    if get_origin(annotation) is list:
        return {"max_length": bounds.ARRAY_MAX_ITEMS}
    return {}


def methods_with_rules(
    services: Sequence[Service],
) -> list[tuple[Service, MethodDescriptor, contract.HttpRule]]:
    out = []
    for service in services:
        for method in service.descriptor.methods:
            rule = contract.http_rule(method)
            if rule is not None:
                out.append((service, method, rule))
    return out


def compile_routes(services: Sequence[Service]) -> list[RoutePlan]:
    """The JSON routes of these services (unary methods with an HTTP rule)."""
    plans = [
        RoutePlan(s, m, r)
        for s, m, r in methods_with_rules(services)
        if not m.client_streaming and not m.server_streaming
    ]
    seen: dict[str, str] = {}
    routes: dict[tuple[str, str], RoutePlan] = {}
    for plan in plans:
        if plan.operation_id in seen:
            raise ValueError(f"two routes would share the operationId {plan.operation_id}")
        seen[plan.operation_id] = plan.path
        key = (plan.http_method, plan.path)
        if key in routes:
            raise ValueError(f"{plan.rpc} and {routes[key].rpc} both answer {plan.http_method} {plan.path}")
        routes[key] = plan
    for plan in plans:
        if plan.status == 201:
            getter = routes.get(("GET", plan.path + "/{id}"))
            if getter is not None:
                plan.location = getter.path
    return plans
