"""File routes: uploads (multipart/form-data → a client-streaming RPC) and downloads (a server-streaming RPC →
a streamed response), beside the JSON route table.

The JSON routes answer one message with one message; a file does not fit in one message (gRPC's 16 MiB, the
gateway's 1 MiB JSON bodies), nor in memory at a million rows. So a file travels in chunks end to end:

- `Upload`: the request message has a oneof with `header` (a message with a `file` FileInfo and any other
  fields, filled from the form's other fields) and `chunk` (bytes). The gateway parses the multipart body
  (Starlette spools a large part to a temporary file, so memory stays flat), sends the header, then the
  file in 256 KiB chunks. The answer is JSON like any route (`unwrap`, `status`, `location`).
- `Download`: the response message has a oneof with `header` (FileInfo: file_name, content_type) and `chunk`.
  The gateway waits for the header (so a refusal is still a proper problem+json with its status), then
  streams the chunks as they come, with Content-Disposition for the file name (RFC 6266, UTF-8 names too).
  Query parameters fill the request's scalar fields (enums by name, `csv` for FILE_FORMAT_CSV), repeated
  strings repeat.

Authentication, rate limits, request ids and problems are the gateway's usual ones. The body size limit of
upload routes is CRM_MAX_UPLOAD_BYTES instead of CRM_MAX_BODY_BYTES (see `middleware`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import grpc
import orjson
from crm_kit import context, grpc_client, spool
from crm_kit.errors import InvalidArgument, TooManyRequests
from crm_kit.idempotency import METADATA_KEY as IDEMPOTENCY_METADATA
from fastapi import FastAPI, Request
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from crm_gateway import bounds
from crm_gateway.idempotency import Reply
from crm_gateway.problems import ProblemError, field_problem, from_grpc, internal_error, render
from crm_gateway.routing import TO_DICT, expand_template

log = logging.getLogger("crm.gateway")

FD = FieldDescriptor
CHUNK_BYTES = 256 * 1024
# How long an upload waits for room in the spool before a 429.
UPLOAD_SPOOL_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Upload:
    path: str
    rpc: str
    status: int = 201
    unwrap: str | None = None
    # For 201: where the new object lives, with {dotted.paths} into the answer, relative to the prefix.
    location: str | None = None
    summary: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class Download:
    path: str
    rpc: str
    # Public query parameter name → request field ("q" → "query").
    query: dict[str, str] = field(default_factory=dict)
    summary: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class FileRoutes:
    """One service's file routes (its address is `<NAME>_SERVICE_ADDR`, as for its JSON routes)."""

    name: str
    service: ServiceDescriptor
    routes: Sequence[Upload | Download]
    prefix: str = "/api/v1"


def _oneof_parts(desc: Any, rpc: str) -> tuple[FieldDescriptor, FieldDescriptor]:
    header, chunk = desc.fields_by_name.get("header"), desc.fields_by_name.get("chunk")
    if header is None or chunk is None or header.type != FD.TYPE_MESSAGE or chunk.type != FD.TYPE_BYTES:
        raise ValueError(f"{rpc}: a file message needs a `header` message and `chunk` bytes (one oneof)")
    return header, chunk


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _enum_value(f: FieldDescriptor, raw: str) -> int:
    """An enum from its full name (FILE_FORMAT_CSV), its short name (csv) or its number."""
    enum = f.enum_type
    wanted = raw.strip().upper()
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    for v in enum.values:
        if v.number and (v.name == wanted or v.name == prefix + wanted or str(v.number) == raw.strip()):
            return v.number
    names = ", ".join(v.name.removeprefix(prefix).lower() for v in enum.values if v.number)
    raise field_problem(f.name, f"must be one of: {names}")


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
        elif f.type in (FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64):
            value = int(raw)
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

    def __init__(self, service: FileRoutes, route: Upload | Download):
        self.service = service
        self.route = route
        method = service.service.methods_by_name.get(route.rpc)
        if method is None:
            raise ValueError(f"{service.service.full_name} has no method {route.rpc}")
        self.method = method
        self.grpc_path = f"/{service.service.full_name}/{method.name}"
        self.request_cls = message_factory.GetMessageClass(method.input_type)
        self.response_cls = message_factory.GetMessageClass(method.output_type)
        self.path = service.prefix.rstrip("/") + route.path
        self.path_fields = re.findall(r"{(\w+)}", route.path)
        self.operation_id = _snake(route.rpc)
        self.upload = isinstance(route, Upload)
        if self.upload:
            if not (method.client_streaming and not method.server_streaming):
                raise ValueError(f"{route.rpc}: an upload is a client-streaming RPC")
            header, _ = _oneof_parts(method.input_type, route.rpc)
            self.header_field = header
            if "file" not in header.message_type.fields_by_name:
                raise ValueError(f"{route.rpc}: the upload header needs a `file` (FileInfo) field")
            self.form_fields = {
                f.name: f
                for f in header.message_type.fields
                if f.name != "file" and f.type != FD.TYPE_MESSAGE
            }
        else:
            if not (method.server_streaming and not method.client_streaming):
                raise ValueError(f"{route.rpc}: a download is a server-streaming RPC")
            _oneof_parts(method.output_type, route.rpc)
            renames = {v: k for k, v in route.query.items()}
            self.query_fields = {
                renames.get(f.name, f.name): f
                for f in method.input_type.fields
                if f.name not in self.path_fields and f.type != FD.TYPE_MESSAGE
            }
        for name in self.path_fields:
            if name not in method.input_type.fields_by_name and not self.upload:
                raise ValueError(f"{route.rpc}: path parameter {{{name}}} is no request field")

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
            {"name": name, "in": "query", "required": False, "schema": _schema(f)}
            for name, f in self.query_fields.items()
        ]
        return {
            "parameters": params,
            "responses": {
                "200": {
                    "description": "The file, streamed.",
                    "content": {
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                    },
                }
            },
        }


def _schema(f: FieldDescriptor) -> dict[str, Any]:
    if f.type == FD.TYPE_ENUM:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", f.enum_type.name).upper() + "_"
        single: dict[str, Any] = {
            "type": "string",
            "enum": [v.name.removeprefix(prefix).lower() for v in f.enum_type.values if v.number],
        }
    elif f.type == FD.TYPE_BOOL:
        single = {"type": "boolean"}
    elif f.type in (FD.TYPE_INT32, FD.TYPE_INT64):
        single = {"type": "integer"}
    else:
        single = {"type": "string", "maxLength": bounds.string_max_length(f)}
    if f.is_repeated:
        return {"type": "array", "items": single, "maxItems": bounds.ARRAY_MAX_ITEMS}
    return single


def mount(app: FastAPI, gateway: Any, services: Sequence[FileRoutes]) -> list[FilePlan]:
    """Add the file routes to the app; returns their plans (the middleware needs the upload paths)."""
    spool.configure(gateway.settings.spool_dir, gateway.settings.spool_max_bytes)  # where uploads are received
    plans = [FilePlan(s, r) for s in services for r in s.routes]
    for plan in plans:
        handler = _upload_endpoint(gateway, plan) if plan.upload else _download_endpoint(gateway, plan)
        app.add_api_route(
            plan.path,
            handler,
            methods=["POST" if plan.upload else "GET"],
            operation_id=plan.operation_id,
            summary=plan.route.summary or plan.route.rpc,
            tags=[plan.route.tag or plan.service.name],
            status_code=plan.route.status if isinstance(plan.route, Upload) else 200,
            openapi_extra=plan.openapi_extra(),
            include_in_schema=True,
        )
    return plans


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
    route = plan.route
    assert isinstance(route, Upload)
    answer = json_format.MessageToDict(
        getattr(response, route.unwrap) if route.unwrap else response, **TO_DICT
    )
    headers = {}
    if route.location:
        headers["Location"] = expand_template(plan.service.prefix.rstrip("/") + route.location, answer)
    return Reply(route.status, orjson.dumps(answer), headers)


def _download_endpoint(gateway: Any, plan: FilePlan) -> Any:
    async def endpoint(request: Request) -> Response:
        path = request.scope["path"]
        limit_headers: dict[str, str] = {}
        try:
            limit_headers = await _caller(gateway, request)
            message = plan.request_cls()
            for name in plan.path_fields:
                setattr(message, name, request.path_params[name])
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
        gateway.channels[target] = grpc_client.channel(target, [plan.service.service])
    return gateway.channels[target]
