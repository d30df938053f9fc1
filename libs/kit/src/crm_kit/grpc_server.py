"""The gRPC server every service runs: standard health and reflection, tracing, and one interceptor that
verifies the caller, binds the request context and maps domain errors to rich statuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from crm_kit import context, grpc_client, idempotency
from crm_kit.auth import JwtVerifier
from crm_kit.db import Database, database_unreachable
from crm_kit.errors import DomainError, Unauthenticated, describe, to_status
from crm_kit.telemetry import tracing_enabled

log = logging.getLogger("crm.grpc")

# How long a stopping server keeps serving after it turned NOT_SERVING, for clients' health watches to see it.
STOP_NOTICE_SECONDS = 0.5


@dataclass(frozen=True)
class Servicer:
    """A servicer instance and the generated `add_XServicer_to_server` function that registers it."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    service_name: str  # full proto name, e.g. "crm.identity.v1.IdentityService"


class CallContextInterceptor(grpc.aio.ServerInterceptor):
    """Verifies `authorization: Bearer <jwt>`, binds RequestContext, turns DomainError into a status.

    Methods in `public_methods` (full names, "/pkg.Service/Method") may be called without a credential.
    """

    def __init__(
        self,
        verifier: JwtVerifier | None,
        public_methods: Iterable[str] = (),
        db: Database | None = None,
        idempotency_ttl_seconds: float = idempotency.DEFAULT_TTL_SECONDS,
    ):
        self.verifier = verifier
        self.public = frozenset(public_methods)
        self.db = db
        self.idempotency_ttl = idempotency_ttl_seconds
        # method → (the servicer's handler, its wrapped handler): wrapping is the same for every call of a
        # method, so it is done once rather than per call.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith("/grpc."):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        is_public = method in self.public
        verifier = self.verifier
        db = self.db
        ttl = self.idempotency_ttl
        serialize = handler.response_serializer

        async def enter(ctx: grpc.aio.ServicerContext) -> Any:
            """Bind the request context and verify the credential (raises Unauthenticated)."""
            metadata = {k: v for k, v in (ctx.invocation_metadata() or ()) if isinstance(v, str)}
            span = trace.get_current_span().get_span_context()
            request_ctx = context.RequestContext(
                request_id=context.request_id_or_new(metadata.get("x-request-id", "")),
                trace_id=f"{span.trace_id:032x}" if span.is_valid else "",
            )
            token = context.bind(request_ctx)
            left = ctx.time_remaining()
            if left is not None:  # calls made for this one get no more than what is left (crm_kit.grpc_client)
                request_ctx.extra[grpc_client.DEADLINE_KEY] = str(time.monotonic() + left)
            client_ip = metadata.get(context.CLIENT_IP_METADATA, "")
            if client_ip:
                request_ctx.extra[context.CLIENT_IP_METADATA] = client_ip[:64]
            auth = metadata.get("authorization", "")
            try:
                if auth.lower().startswith("bearer ") and verifier is not None:
                    access_token = auth[7:].strip()
                    request_ctx.principal = await verifier.verify(access_token)
                    request_ctx.extra["access_token"] = access_token
                elif not is_public:
                    raise Unauthenticated("a credential is required", reason="missing_credential")
                key = metadata.get(idempotency.METADATA_KEY, "")
                if key and db is not None:
                    request_ctx.extra["idempotency_key"] = key[:64]
                    request_ctx.extra["rpc_method"] = method
                    request_ctx.extra["idempotency_ttl"] = str(ttl)
            except BaseException:
                context.reset(token)
                raise
            return token

        async def fail(exc: Exception, ctx: grpc.aio.ServicerContext) -> None:
            if isinstance(exc, DomainError):
                await ctx.abort_with_status(to_status(exc))
            if isinstance(exc, grpc.aio.AbortError | grpc.aio.UsageError):
                raise exc
            if database_unreachable(exc):  # the database is down or full: the client may retry, it is no bug
                log.warning("%s: infrastructure unavailable: %s", method, describe(exc))
                await ctx.abort(grpc.StatusCode.UNAVAILABLE, "a database this service needs is unavailable; retry")
            log.error("unhandled error in %s", method, exc_info=exc)
            await ctx.abort(grpc.StatusCode.INTERNAL, "internal error")

        async def once(inner: Callable[..., Any], request: Any, ctx: grpc.aio.ServicerContext) -> Any:
            """Run a call that answers once; with an idempotency key, replay or record its answer."""
            extra = context.current().extra
            key = extra.get("idempotency_key")
            if not key or db is None:
                return await inner(request, ctx)
            # The record names the request too (method and a hash of the message): the same key with another
            # request is refused, never answered with the first one's reply.
            extra["rpc_method"] = idempotency.request_name(method, request)
            async with db.read() as session:
                stored = await idempotency.previous(session, key, extra["rpc_method"], ttl)
            if stored is not None:
                return _Replayed(stored)
            try:
                response = await inner(request, ctx)
            except BaseException:
                if extra.get("idempotency_marked"):
                    # A failure that still committed something (e.g. a sign-in's failure count): a retry may
                    # run again rather than be told it was applied.
                    async with db.sessions() as session, session.begin():
                        await idempotency.forget(session, key)
                raise
            if extra.get("idempotency_marked"):
                async with db.sessions() as session, session.begin():
                    await idempotency.store(session, key, serialize(response))
            return response

        def answers_once(inner: Callable[..., Any]) -> Callable[..., Any]:
            # Unary and client-streaming calls: one answer.
            async def behavior(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                token = None
                try:
                    token = await enter(ctx)
                    return await once(inner, request, ctx)
                except Exception as exc:  # DomainError → status; AbortError re-raised; else INTERNAL
                    await fail(exc, ctx)
                finally:
                    if token is not None:
                        context.reset(token)

            return behavior

        def answers_stream(inner: Callable[..., Any]) -> Callable[..., Any]:
            # Server-streaming calls (e.g. file downloads): the context holds for the whole stream.
            async def behavior(request: Any, ctx: grpc.aio.ServicerContext) -> Any:
                token = None
                try:
                    token = await enter(ctx)
                    async for item in inner(request, ctx):
                        yield item
                except Exception as exc:  # DomainError → status; AbortError re-raised; else INTERNAL
                    await fail(exc, ctx)
                finally:
                    if token is not None:
                        context.reset(token)

            return behavior

        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": (lambda r: r.data if isinstance(r, _Replayed) else serialize(r))
            if serialize is not None
            else None,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(answers_once(handler.unary_unary), **options)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(answers_once(handler.stream_unary), **options)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(answers_stream(handler.unary_stream), **options)
        return handler  # bidirectional streams: none yet


@dataclass(frozen=True, slots=True)
class _Replayed:
    """An answer stored by an earlier attempt of the same request, sent again as it was."""

    data: bytes


class GrpcServer:
    def __init__(
        self,
        servicers: list[Servicer],
        *,
        verifier: JwtVerifier | None,
        public_methods: Iterable[str] = (),
        host: str = "0.0.0.0",
        port: int = 50051,
        db: Database | None = None,
        idempotency_ttl_seconds: float = idempotency.DEFAULT_TTL_SECONDS,
        keepalive: grpc_client.Keepalive = grpc_client.KEEPALIVE,
    ):
        interceptors: list[grpc.aio.ServerInterceptor] = [
            CallContextInterceptor(verifier, public_methods, db, idempotency_ttl_seconds)
        ]
        if tracing_enabled():
            interceptors.insert(0, aio_server_interceptor())
        self.options: list[tuple[str, Any]] = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Clients re-resolve DNS only when a connection closes: cycling connections every few minutes
            # lets callers find replicas added by a scale-out (calls in flight get the grace to finish).
            ("grpc.max_connection_age_ms", 5 * 60 * 1000),
            ("grpc.max_connection_age_grace_ms", 30 * 1000),
            # Accept the kit's clients' keepalive pings (the one declaration in crm_kit.grpc_client).
            *keepalive.server_options(),
        ]
        self.server = grpc.aio.server(interceptors=interceptors, options=self.options)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.names = [s.service_name for s in servicers]
        for s in servicers:
            s.add_to_server(s.servicer, self.server)
        reflection.enable_server_reflection(
            [
                *self.names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.names]:
            await self.health.set(name, status)

    async def stop(self, grace_seconds: float) -> None:
        """Turn NOT_SERVING, give clients a moment to move away, then refuse new calls and finish those in
        flight, all within `grace_seconds`.

        The moment matters: when grpc stops a server it cancels the calls that reached it but were not started
        yet, and a client that still sends here sees CANCELLED. Clients of the kit's channels watch health
        (`grpc_client.service_config`) and stop sending within milliseconds of NOT_SERVING.
        """
        await self.set_serving(False)
        notice = min(STOP_NOTICE_SECONDS, grace_seconds / 2)
        if notice > 0:
            await asyncio.sleep(notice)
        await self.server.stop(max(0.0, grace_seconds - notice))
