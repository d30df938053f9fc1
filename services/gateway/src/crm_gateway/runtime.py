"""The gateway at run time: one gRPC channel per service, its database (idempotency entries and rate-limit
counters, shared by every replica), the authenticator, and `handle`, the one request path every route shares.

Every call to a service has a deadline (`CRM_GRPC_TIMEOUT_SECONDS` for routed calls), which the service passes
on to the calls it makes in turn (crm_kit.grpc_client). A write carrying an Idempotency-Key whose call fails
with UNAVAILABLE (the connection failed before an answer) is tried again within that deadline: the service's
copy of the key (crm_kit.idempotency) makes a second attempt of a write that did arrive a replay, not a
second write."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
import orjson
from crm.identity.v1 import events_pb2 as identity_events_pb2
from crm.identity.v1 import identity_pb2
from crm_kit import context, grpc_client
from crm_kit.auth import JwtVerifier
from crm_kit.events import EventSettings, connect_nats
from crm_kit.events.follow import follow
from crm_kit.idempotency import METADATA_KEY as IDEMPOTENCY_METADATA
from fastapi import Request
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.responses import Response

from crm_gateway.auth import Authenticator, Caller
from crm_gateway.idempotency import IdempotencyStore, Reply, public_scope
from crm_gateway.problems import MEDIA_TYPE, ProblemError, from_grpc, internal_error, render
from crm_gateway.ratelimit import RateLimits
from crm_gateway.routing import RoutePlan, Service
from crm_gateway.settings import GatewaySettings
from crm_gateway.store import GatewayDatabase

log = logging.getLogger("crm.gateway")

IDENTITY = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]
# Attempts of a keyed write whose connection failed before an answer (within the call's deadline).
WRITE_ATTEMPTS = 4
WRITE_RETRY_BACKOFF = 0.1
# The deadline of the calls the gateway makes to identity for credentials (key sets, API keys).
CREDENTIAL_TIMEOUT = 5.0


class Gateway:
    def __init__(self, settings: GatewaySettings, services: Sequence[Service], plans: Sequence[RoutePlan]):
        self.settings = settings
        self.services = list(services)
        self.plans = list(plans)
        self.channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, Any] = {}
        self.database = GatewayDatabase(
            settings.database_url, pool_size=settings.database_pool_size, migrate=settings.migrate_on_start
        )
        self.limits = RateLimits(
            self.database,
            per_tenant=settings.rate_limit_per_tenant,
            public=settings.rate_limit_public,
            api_key_default_per_minute=settings.api_key_default_rate_limit_per_minute,
            invalid_api_keys=settings.rate_limit_invalid_api_keys,
        )
        self.idempotency = IdempotencyStore(
            self.database,
            secret=settings.idempotency_secret,
            ttl_seconds=settings.idempotency_ttl_seconds,
            lock_seconds=settings.idempotency_lock_seconds,
        )
        self.verifier = JwtVerifier(
            self._jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            refresh_seconds=settings.jwks_refresh_seconds,
        )
        self.auth = Authenticator(
            self.verifier, self._authenticate_api_key, api_key_ttl=settings.api_key_cache_seconds
        )
        self.timeout = settings.grpc_timeout_seconds
        self._nc: Any = None
        self._follower: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        for service in self._backends():
            target = self.settings.service_addr(service.name)
            if target not in self.channels:
                descriptors = [s.descriptor for s in self.services if s.name == service.name] or [
                    service.descriptor
                ]
                self.channels[target] = grpc_client.channel(target, descriptors, pass_deadline=False)
        for plan in self.plans:
            self._calls[plan.grpc_path] = self._multicallable(plan.service.name, plan.grpc_path, plan)
        await self.database.start()
        self._follower = asyncio.create_task(self._follow_identity(), name="follow identity events")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        if self._nc is not None:
            await self._nc.close()
        await self.limits.close()  # the hits counted in memory reach the shared counters
        await self.database.stop()
        for ch in self.channels.values():
            await ch.close()
        self.channels.clear()

    async def _follow_identity(self) -> None:
        """Follow identity's events so that a revoked API key stops working at once on this replica, not when
        its cached exchange expires. NATS missing at start-up is retried in the background, forever: the
        gateway serves without it, and the cache's lifetime still bounds a revoked key."""
        settings = EventSettings(namespace=self.settings.events_namespace, connect_attempts=1)
        wait = 0.5
        while self._nc is None:
            try:
                self._nc = await connect_nats(
                    self.settings.nats_servers(),
                    settings,
                    name="crm-gateway-follower",
                    options=self.settings.nats_options(),
                )
            except Exception as exc:
                log.warning("cannot follow identity events yet (%s); retrying in %.0f s", exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)
        await follow(self._nc, "crm.identity.v1.ApiKeyRevoked", self._on_api_key_revoked, settings.namespace)

    def _on_api_key_revoked(self, envelope: Any) -> None:
        revoked = identity_events_pb2.ApiKeyRevoked()
        if envelope.payload.Unpack(revoked):
            self.auth.forget_api_key(revoked.api_key.id)

    def _backends(self) -> list[Service]:
        """One gRPC service per backend name (its health is checked once; channels are per address)."""
        backends: dict[str, Service] = {}
        for service in self.services:
            backends.setdefault(service.name, service)
        if "identity" not in backends:  # the gateway always needs identity for credentials
            backends["identity"] = Service("identity", IDENTITY)
        return list(backends.values())

    def channel_for(self, service_name: str) -> grpc.aio.Channel:
        return self.channels[self.settings.service_addr(service_name)]

    def _multicallable(self, service_name: str, path: str, plan: Any) -> Any:
        return self.channel_for(service_name).unary_unary(
            path,
            request_serializer=plan.request_cls.SerializeToString,
            response_deserializer=plan.response_cls.FromString,
            _registered_method=True,
        )

    # ------------------------------------------------------------ identity calls the gateway itself makes

    async def _jwks(self) -> dict[str, Any]:
        stub = self.channel_for("identity").unary_unary(
            f"/{IDENTITY.full_name}/GetJwks",
            request_serializer=identity_pb2.GetJwksRequest.SerializeToString,
            response_deserializer=identity_pb2.GetJwksResponse.FromString,
        )
        response = await stub(
            identity_pb2.GetJwksRequest(),
            timeout=CREDENTIAL_TIMEOUT,
            metadata=grpc_client.outgoing_metadata(""),
        )
        return json_format.MessageToDict(response.jwks)

    async def _authenticate_api_key(self, key: str) -> identity_pb2.AuthenticateApiKeyResponse:
        stub = self.channel_for("identity").unary_unary(
            f"/{IDENTITY.full_name}/AuthenticateApiKey",
            request_serializer=identity_pb2.AuthenticateApiKeyRequest.SerializeToString,
            response_deserializer=identity_pb2.AuthenticateApiKeyResponse.FromString,
        )
        return await stub(
            identity_pb2.AuthenticateApiKeyRequest(api_key=key),
            timeout=CREDENTIAL_TIMEOUT,
            metadata=grpc_client.outgoing_metadata(""),
        )

    async def ready(self) -> dict[str, str]:
        """The standard gRPC health of every service behind the gateway ("SERVING" or why not)."""
        states = {}
        for service in self._backends():
            stub = health_pb2_grpc.HealthStub(self.channel_for(service.name))
            try:
                answer = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service.descriptor.full_name), timeout=1.0
                )
                states[service.name] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.RpcError as exc:
                states[service.name] = f"unreachable: {exc.code().name if hasattr(exc, 'code') else exc}"
        return states

    # ------------------------------------------------------------ the request path

    async def admit(self, request: Request, *, public: bool) -> tuple[Caller | None, dict[str, str]]:
        """Who calls (None on a public route) and the rate-limit headers of the answer; raises a problem when
        the credential is missing or bad, or a limit is reached. The caller's credential is set on the
        request context, so calls to services made for this request carry it."""
        client_ip = request.client.host if request.client else "unknown"  # resolved by EdgeMiddleware
        if public:
            return None, await self.limits.check_public(client_ip)
        headers = request.headers
        api_key = headers.get("x-api-key")
        if api_key and not self.auth.knows_api_key(api_key):
            # A source that keeps sending keys identity refuses is stopped here, before it costs identity
            # a lookup (and a transaction) per guess.
            await self.limits.check_invalid_api_keys(client_ip)
        try:
            caller = await self.auth.authenticate(headers.get("authorization"), api_key)
        except ProblemError as exc:
            if api_key and exc.status == 401:
                await self.limits.count_invalid_api_key(client_ip)
            raise
        ctx = context.current()
        ctx.principal = caller.principal
        ctx.extra["access_token"] = caller.token
        limit_headers = await self.limits.check(
            caller.principal.tenant_id, caller.api_key_id, caller.api_key_rate_limit_per_minute
        )
        return caller, limit_headers

    async def call(self, grpc_path: str, message: Any) -> Any:
        """A unary call of a routed RPC for the current request, with the caller's credential."""
        return await self._calls[grpc_path](
            message, timeout=self.timeout, metadata=grpc_client.outgoing_metadata()
        )

    def routes(self, grpc_path: str) -> bool:
        return grpc_path in self._calls

    async def handle(self, plan: RoutePlan, request: Request, values: dict[str, Any]) -> Response:
        path = request.scope["path"]
        limit_headers: dict[str, str] = {}
        try:
            headers = request.headers
            caller, limit_headers = await self.admit(request, public=plan.public)
            if not plan.if_match and "if-match" in headers and plan.http_method in ("PATCH", "PUT", "DELETE"):
                raise ProblemError(
                    400, "if_match_unsupported", "this resource does not support conditional changes yet"
                )
            if plan.body_model is not None:
                _refuse_nul(await request.body())
            message = plan.build_request(values)
            key = values.get("header__idempotency_key")
            if key is not None:
                body = await request.body()
                principal = caller.principal if caller else None
                # A public route has no credential to scope the key by: its body is the scope, so an answer
                # (tokens, say) is only ever replayed to a caller that sent the very same request.
                scope = f"{principal.tenant_id}:{principal.actor_id}" if principal else public_scope(body)
                query = request.scope.get("query_string", b"").decode("latin-1")
                target = path + ("?" + query if query else "")
                # The service records this digest with its write, so a retry after a replica died mid-write
                # is replayed or refused there instead of running twice (see crm_kit.idempotency).
                digest = hashlib.sha256(f"{scope}\n{key}\n{plan.http_method}\n{target}".encode()).hexdigest()
                reply = await self.idempotency.run(
                    scope=scope,
                    key=key,
                    method=plan.http_method,
                    target=target,
                    body=body,
                    execute=lambda: self._execute(plan, message, path, digest),
                )
            else:
                reply = await self._execute(plan, message, path)
        except ProblemError as exc:
            return render(exc, path, limit_headers)
        except grpc.RpcError as exc:
            return render(from_grpc(exc), path, limit_headers)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, path)
            return render(internal_error(), path, limit_headers)
        if limit_headers:
            reply.headers.update(limit_headers)
        if (
            plan.http_method == "GET"
            and reply.status == 200
            and "ETag" in reply.headers
            and headers.get("if-none-match") == reply.headers["ETag"]
        ):
            return Response(status_code=304, headers=reply.headers)
        if reply.status == 204:
            return Response(status_code=204, headers=reply.headers)
        media = reply.headers.pop("content-type", None) or (
            MEDIA_TYPE if reply.status >= 400 else "application/json"
        )
        return Response(reply.body, status_code=reply.status, headers=reply.headers, media_type=media)

    async def _execute(self, plan: RoutePlan, message: Any, path: str, idempotency_digest: str = "") -> Reply:
        """Call the service; a failure becomes the problem reply (so an idempotent replay repeats it too)."""
        metadata = grpc_client.outgoing_metadata()
        call = self._calls[plan.grpc_path]
        deadline = time.monotonic() + self.timeout
        attempts = WRITE_ATTEMPTS if idempotency_digest else 1
        if idempotency_digest:
            metadata += ((IDEMPOTENCY_METADATA, idempotency_digest),)
        for attempt in range(1, attempts + 1):
            try:
                response = await call(message, timeout=deadline - time.monotonic(), metadata=metadata)
            except grpc.RpcError as exc:
                backoff = WRITE_RETRY_BACKOFF * 2 ** (attempt - 1)
                if (
                    attempt < attempts
                    and isinstance(exc, grpc.aio.AioRpcError)
                    and exc.code() == grpc.StatusCode.UNAVAILABLE
                    and deadline - time.monotonic() > backoff + 0.1
                ):
                    # The connection failed before an answer. The key makes a second attempt safe: the
                    # service replays or refuses a write that did arrive (crm_kit.idempotency).
                    log.info("retrying a keyed write after %s (attempt %d)", exc.details(), attempt)
                    await asyncio.sleep(backoff)
                    continue
                return Reply.of_rpc_error(exc, path)
            return plan.render(response)
        raise AssertionError("unreachable")


def _refuse_nul(body: bytes) -> None:
    """Text with NUL characters cannot be stored (PostgreSQL refuses them), so it is bad input, not a 500."""
    if b"\\u0000" not in body:
        return

    def has_nul(value: object) -> bool:
        if isinstance(value, str):
            return "\x00" in value
        if isinstance(value, dict):
            return any(has_nul(k) or has_nul(v) for k, v in value.items())
        if isinstance(value, list):
            return any(has_nul(v) for v in value)
        return False

    if has_nul(orjson.loads(body)):
        raise ProblemError(422, "nul_character", "text may not contain NUL (\\u0000) characters", errors=[])
