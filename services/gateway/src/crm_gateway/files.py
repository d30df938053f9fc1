"""File routes: uploads (multipart/form-data → a client-streaming RPC) and downloads (a server-streaming RPC →
a streamed response), beside the JSON routes, derived the same way from the methods' `google.api.http` rules.

The JSON routes answer one message with one message; a file does not fit in one message (gRPC's 16 MiB, the
gateway's 1 MiB JSON bodies), nor in memory at a million rows. So a file travels in chunks end to end:

- `Upload`: the request message has a oneof with `header` (a message with a `file` FileInfo and any other
  fields, filled from the form's other fields) and `chunk` (bytes). The gateway parses the multipart body
  (Starlette spools a large part to a temporary file, so memory stays flat), sends the header, then the
  file in 256 KiB chunks. The answer is JSON like any route (`response_body`; 201 with `Location`).
- `Download`: the response message has a oneof with `header` (FileInfo: file_name, content_type) and `chunk`.
  The gateway waits for the header (so a refusal is still a proper problem+json with its status), then
  streams the chunks as they come, with Content-Disposition for the file name (RFC 6266, UTF-8 names too).
  Query parameters fill the request's scalar fields (enums by their JSON word, `csv` for FILE_FORMAT_CSV),
  repeated strings repeat.

Authentication, rate limits, request ids and problems are the gateway's usual ones. The body size limit of
upload routes is CRM_MAX_UPLOAD_BYTES instead of CRM_MAX_BODY_BYTES (see `middleware`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import grpc
import orjson
from crm_kit import context, grpc_client, spool
from crm_kit.errors import InvalidArgument, TooManyRequests
from crm_kit.idempotency import METADATA_KEY as IDEMPOTENCY_METADATA
from fastapi import FastAPI, Request
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import Response, StreamingResponse

from crm_gateway import bounds, contract, jsonmap, schema
from crm_gateway.idempotency import Reply
from crm_gateway.problems import ProblemError, field_problem, from_grpc, internal_error, render
from crm_gateway.routing import Service, methods_with_rules, snake, summary_of, tag_of

log = logging.getLogger("crm.gateway")

FD = FieldDescriptor
CHUNK_BYTES = 256 * 1024
# What a download may be (imports' error reports, exports).
FILE_MEDIA = ("text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
# How long an upload waits for room in the spool before a 429.
UPLOAD_SPOOL_WAIT_SECONDS = 10.0


def _oneof_parts(desc: Any, rpc: str) -> tuple[FieldDescriptor, FieldDescriptor]:
    header, chunk = desc.fields_by_name.get("header"), desc.fields_by_name.get("chunk")
    if header is None or chunk is None or header.type != FD.TYPE_MESSAGE or chunk.type != FD.TYPE_BYTES:
        raise ValueError(f"{rpc}: a file message needs a `header` message and `chunk` bytes (one oneof)")
    return header, chunk


def _enum_value(f: FieldDescriptor, raw: str) -> int:
    """An enum from its JSON word (`csv` for FILE_FORMAT_CSV)."""
    names = contract.enum_from_json(f.enum_type)
    value = names.get(raw.strip())
    if value is None:
        raise field_problem(f.name, "must be one of: " + ", ".join(names))
    return value


def _set_scalar(message: Any, f: FieldDescriptor, raw: str) -> None:
    """One query parameter or form field into the request, within the edge's bounds (crm_gateway.bounds)."""
    limit = bounds.QUERY_PARAM_MAX_LENGTH if f.type != FD.TYPE_STRING else bounds.string_max_length(f)
    if len(raw) > limit:
        raise field_problem(f.name, f"must be at most {limit} characters")
    if f.is_repeated and len(getattr(message, f.name)) >= bounds.ARRAY_MAX_ITEMS:
        raise field_problem(f.name, f"takes at most {bounds.ARRAY_MAX_ITEMS} values")
    try:
        if f.type == FD.TYPE_ENUM:
            value: Any = _enum_value(f, raw)
        elif f.type == FD.TYPE_BOOL:
            value = raw.strip().lower() in ("1", "true", "yes")
        elif f.type in schema.INT_BOUNDS:
            value = int(raw)
            low, high = schema.INT_BOUNDS[f.type]  # the bounds of every other integer input
            if not low <= value <= high:
                raise field_problem(f.name, f"must be between {low} and {high}")
        elif f.type == FD.TYPE_STRING:
            value = raw
        else:
            raise field_problem(f.name, "cannot be given here")
    except ValueError:
        raise field_problem(f.name, "must be a number") from None
    if f.is_repeated:
        getattr(message, f.name).append(value)
    else:
        setattr(message, f.name, value)


def content_disposition(file_name: str) -> str:
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", file_name) or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(file_name)}"


class FilePlan:
    """A file route compiled against its gRPC method, and its FastAPI endpoint."""

    def __init__(self, service: Service, method: MethodDescriptor, rule: contract.HttpRule):
        self.service = service
        self.method = method
        self.rpc = method.name
        self.grpc_path = f"/{service.descriptor.full_name}/{method.name}"
        self.request_cls = message_factory.GetMessageClass(method.input_type)
        self.response_cls = message_factory.GetMessageClass(method.output_type)
        self.path = rule.path
        self.path_fields = re.findall(r"{(\w+)}", rule.path)
        self.operation_id = snake(method.name)
        self.summary, self.description = summary_of(method)
        self.tag = tag_of(rule.path)
        self.upload = method.client_streaming
        self.unwrap = rule.response_body or None
        self.status = 201 if self.upload else 200
        self.location: str | None = None
        self.response_model: Any = None
        if self.upload:
            if method.server_streaming or rule.verb != "POST":
                raise ValueError(f"{self.rpc}: an upload is a client-streaming RPC behind a POST")
            header, _ = _oneof_parts(method.input_type, self.rpc)
            self.header_field = header
            answer = method.output_type
            if self.unwrap:
                answer = answer.fields_by_name[self.unwrap].message_type
            self.response_model = schema.REGISTRY.output(answer)
            if "file" not in header.message_type.fields_by_name:
                raise ValueError(f"{self.rpc}: the upload header needs a `file` (FileInfo) field")
            self.form_fields = {
                f.name: f
                for f in header.message_type.fields
                if f.name != "file" and f.type != FD.TYPE_MESSAGE
            }
        else:
            if rule.verb != "GET":
                raise ValueError(f"{self.rpc}: a download is a server-streaming RPC behind a GET")
            _oneof_parts(method.output_type, self.rpc)
            self.query_fields = {
                f.name: f
                for f in method.input_type.fields
                if f.name not in self.path_fields and f.type != FD.TYPE_MESSAGE
            }
        for name in self.path_fields:
            if name not in method.input_type.fields_by_name and not self.upload:
                raise ValueError(f"{self.rpc}: path parameter {{{name}}} is no request field")

    # ------------------------------------------------------------ OpenAPI

    def openapi_extra(self) -> dict[str, Any]:
        if self.upload:
            props: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
            for name, f in self.form_fields.items():
                props[name] = _schema(f)
            return {
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": bounds.IDEMPOTENCY_KEY_MAX_LENGTH},
                        "description": "Any unique string (e.g. a UUID): a retry with the same key and the same "
                        "upload gets the first response again instead of a second import. Kept 24 h.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file", *self.form_fields],
                                "properties": props,
                            }
                        }
                    },
                },
            }
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "maxLength": bounds.PATH_PARAM_MAX_LENGTH},
                "description": schema.describe(self.method.input_type.fields_by_name[name]),
            }
            for name in self.path_fields
        ]
        params += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": _schema(f),
                "description": schema.describe(f),
            }
            for name, f in self.query_fields.items()
        ]
        return {
            "parameters": params,
            "responses": {
                "200": {
                    "description": "The file, streamed: CSV (UTF-8) or XLSX, as `format` asks.",
                    "content": {
                        media: {"schema": {"type": "string", "format": "binary"}} for media in FILE_MEDIA
                    },
                }
            },
        }


def _schema(f: FieldDescriptor) -> dict[str, Any]:
    if f.type == FD.TYPE_ENUM:
        single: dict[str, Any] = {"type": "string", "enum": list(contract.enum_names(f.enum_type))}
    elif f.type == FD.TYPE_BOOL:
        single = {"type": "boolean"}
    elif f.type in schema.INT_BOUNDS:
        low, high = schema.INT_BOUNDS[f.type]
        single = {"type": "integer", "minimum": low, "maximum": high}
    else:
        single = {"type": "string", "maxLength": bounds.string_max_length(f)}
    if f.is_repeated:
        return {"type": "array", "items": single, "maxItems": bounds.ARRAY_MAX_ITEMS}
    return single


def file_plans(services: Sequence[Service], json_routes: Sequence[Any] = ()) -> list[FilePlan]:
    """The file routes of these services: their streaming methods with an HTTP rule."""
    plans = [
        FilePlan(s, m, r)
        for s, m, r in methods_with_rules(services)
        if m.client_streaming or m.server_streaming
    ]
    getters = {p.path for p in json_routes if p.http_method == "GET"}
    for plan in plans:
        if plan.upload and plan.path + "/{id}" in getters:
            plan.location = plan.path + "/{id}"
    return plans


def mount(app: FastAPI, gateway: Any, plans: Sequence[FilePlan]) -> list[FilePlan]:
    """Add the file routes to the app; returns their plans (the middleware needs the upload paths)."""
    spool.configure(
        gateway.settings.spool_dir, gateway.settings.spool_max_bytes
    )  # where uploads are received
    for plan in plans:
        handler = _upload_endpoint(gateway, plan) if plan.upload else _download_endpoint(gateway, plan)
        app.add_api_route(
            plan.path,
            handler,
            methods=["POST" if plan.upload else "GET"],
            operation_id=plan.operation_id,
            summary=plan.summary,
            description=plan.description or None,
            tags=[plan.tag],
            status_code=plan.status,
            response_model=plan.response_model,
            openapi_extra=plan.openapi_extra(),
            include_in_schema=True,
        )
    return list(plans)


def upload_pattern(plan: FilePlan) -> re.Pattern[str]:
    """The upload route's path as a pattern, for the middleware's body checks."""
    parts = ("[^/]+" if p.startswith("{") else re.escape(p) for p in plan.path.split("/"))
    return re.compile("^" + "/".join(parts) + "$")


async def _caller(gateway: Any, request: Request) -> dict[str, str]:
    ctx = context.current()
    caller = await gateway.auth.authenticate(
        request.headers.get("authorization"), request.headers.get("x-api-key")
    )
    ctx.principal = caller.principal
    ctx.extra["access_token"] = caller.token
    return await gateway.limits.check(
        caller.principal.tenant_id, caller.api_key_id, caller.api_key_rate_limit_per_minute
    )


def _upload_endpoint(gateway: Any, plan: FilePlan) -> Any:
    async def endpoint(request: Request) -> Response:
        path = request.scope["path"]
        limit_headers: dict[str, str] = {}
        try:
            limit_headers = await _caller(gateway, request)
            if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
                raise ProblemError(
                    415, "unsupported_media_type", "upload the file as multipart/form-data with a `file` part"
                )
            # The file part is received into the spool (Starlette's SpooledTemporaryFile: memory up to 1 MiB,
            # then a file in CRM_SPOOL_DIR): its room is reserved first, by the body's declared length.
            declared = request.headers.get("content-length", "")
            size = int(declared) if declared.isdigit() else gateway.settings.max_upload_bytes
            room = spool.current().reserve(size, wait=UPLOAD_SPOOL_WAIT_SECONDS)
            try:
                await room.__aenter__()
            except InvalidArgument as exc:  # larger than the whole spool
                raise ProblemError(413, "body_too_large", exc.message) from None
            except TooManyRequests as exc:
                raise ProblemError(429, "spool_full", exc.message, headers={"Retry-After": "60"}) from None
            try:
                form = await request.form(max_files=1, max_fields=50)
            except (MultiPartException, HTTPException) as exc:  # no boundary, a broken part, too many parts…
                await room.__aexit__(None, None, None)
                reason = getattr(exc, "message", None) or getattr(exc, "detail", "")
                raise ProblemError(400, "malformed_multipart", f"the multipart body cannot be read: {reason}") from None
            except BaseException:
                await room.__aexit__(None, None, None)
                raise
            try:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise field_problem("file", "is required: the form needs a `file` part")
                key = request.headers.get("idempotency-key")
                if key is None:
                    reply = await _forward_upload(gateway, plan, form, upload, path)
                else:
                    # Like every POST (crm_gateway.runtime): the same key and the same upload (file and form
                    # fields) replay the first answer; the same key with another upload is a 422.
                    principal = context.current().principal
                    scope = f"{principal.tenant_id}:{principal.actor_id}" if principal else "anonymous"
                    digest = hashlib.sha256(f"{scope}\n{key}\nPOST\n{path}".encode()).hexdigest()
                    reply = await gateway.idempotency.run(
                        scope=scope,
                        key=key,
                        method="POST",
                        target=path,
                        body=await _upload_fingerprint(form, upload),
                        execute=lambda: _forward_upload(gateway, plan, form, upload, path, digest),
                    )
            finally:
                await form.close()
                await room.__aexit__(None, None, None)
            headers = {**reply.headers, **limit_headers}
            media = headers.pop("content-type", None) or "application/json"
            return Response(reply.body, status_code=reply.status, headers=headers, media_type=media)
        except ProblemError as exc:
            return render(exc, path, limit_headers)
        except grpc.RpcError as exc:
            return render(from_grpc(exc), path, limit_headers)
        except Exception:
            log.exception("unhandled error on upload %s", path)
            return render(internal_error(), path, limit_headers)

    endpoint.__name__ = plan.operation_id
    return endpoint


async def _upload_fingerprint(form: Any, upload: UploadFile) -> bytes:
    """What makes two uploads the same request: the file's name and bytes and the form's other fields."""
    digest = hashlib.sha256()
    digest.update((upload.filename or "").encode() + b"\0")
    for name, value in sorted((k, v) for k, v in form.multi_items() if isinstance(v, str)):
        digest.update(f"{name}={value}".encode() + b"\0")
    while chunk := await upload.read(CHUNK_BYTES):
        digest.update(chunk)
    await upload.seek(0)
    return digest.digest()


async def _forward_upload(
    gateway: Any, plan: FilePlan, form: Any, upload: UploadFile, path: str, idempotency_digest: str = ""
) -> Reply:
    """Stream the upload to the service; its answer, or the problem it raised, as a reply (so a replay of an
    idempotent upload repeats a refusal too)."""
    header = plan.request_cls()
    head = getattr(header, plan.header_field.name)
    head.file.file_name = upload.filename or "upload"
    head.file.content_type = upload.content_type or ""
    head.file.size_bytes = upload.size or 0
    for name, f in plan.form_fields.items():
        value = form.get(name)
        if isinstance(value, str) and value != "":
            _set_scalar(head, f, value)

    async def parts() -> AsyncIterator[Any]:
        yield header
        while chunk := await upload.read(CHUNK_BYTES):
            yield plan.request_cls(chunk=chunk)

    call = _channel(gateway, plan).stream_unary(
        plan.grpc_path,
        request_serializer=plan.request_cls.SerializeToString,
        response_deserializer=plan.response_cls.FromString,
    )
    metadata = grpc_client.outgoing_metadata()
    if idempotency_digest:
        metadata += ((IDEMPOTENCY_METADATA, idempotency_digest),)
    try:
        response = await call(parts(), timeout=gateway.settings.file_timeout_seconds, metadata=metadata)
    except grpc.RpcError as exc:
        return Reply.of_rpc_error(exc, path)
    answer = jsonmap.to_json(getattr(response, plan.unwrap) if plan.unwrap else response)
    headers = {}
    if plan.location and answer.get("id"):
        headers["Location"] = plan.location.replace("{id}", str(answer["id"]))
    return Reply(plan.status, orjson.dumps(answer), headers)


def _download_endpoint(gateway: Any, plan: FilePlan) -> Any:
    async def endpoint(request: Request) -> Response:
        path = request.scope["path"]
        limit_headers: dict[str, str] = {}
        try:
            limit_headers = await _caller(gateway, request)
            message = plan.request_cls()
            for name in plan.path_fields:
                value = request.path_params[name]
                if len(value) > bounds.PATH_PARAM_MAX_LENGTH:
                    raise field_problem(name, f"must be at most {bounds.PATH_PARAM_MAX_LENGTH} characters")
                setattr(message, name, value)
            for key, value in request.query_params.multi_items():
                f = plan.query_fields.get(key)
                if f is None:
                    raise field_problem(key, "is not a parameter of this route")
                _set_scalar(message, f, value)
            call = _channel(gateway, plan).unary_stream(
                plan.grpc_path,
                request_serializer=plan.request_cls.SerializeToString,
                response_deserializer=plan.response_cls.FromString,
            )
            stream = call(
                message,
                timeout=gateway.settings.file_timeout_seconds,
                metadata=grpc_client.outgoing_metadata(),
            )
            first = await stream.read()
            if first is grpc.aio.EOF or first.WhichOneof("part") != "header":
                stream.cancel()
                raise internal_error()
        except ProblemError as exc:
            return render(exc, path, limit_headers)
        except grpc.RpcError as exc:
            return render(from_grpc(exc), path, limit_headers)
        except Exception:
            log.exception("unhandled error on download %s", path)
            return render(internal_error(), path, limit_headers)

        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    part = await stream.read()
                    if part is grpc.aio.EOF:
                        return
                    if part.WhichOneof("part") == "chunk":
                        yield part.chunk
            except grpc.RpcError as exc:  # too late for a status: the client sees a cut transfer
                log.warning("download %s stopped: %s", path, exc)
                raise
            finally:
                stream.cancel()

        headers = {**limit_headers, "Content-Disposition": content_disposition(first.header.file_name)}
        return StreamingResponse(
            body(), media_type=first.header.content_type or "application/octet-stream", headers=headers
        )

    endpoint.__name__ = plan.operation_id
    return endpoint


def _channel(gateway: Any, plan: FilePlan) -> grpc.aio.Channel:
    """The service's channel (shared with its JSON routes; opened here if it has none)."""
    target = gateway.settings.service_addr(plan.service.name)
    if target not in gateway.channels:
        gateway.channels[target] = grpc_client.channel(target, [plan.service.descriptor])
    return gateway.channels[target]
