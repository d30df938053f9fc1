"""gRPC channels to other services: client-side round robin over every replica, bounded retries of
idempotent calls, tracing, the caller's credential, request id and client address passed on, and deadlines:
a call made while serving another gets at most what is left of the incoming call's deadline.

Keepalive is declared once here (`KEEPALIVE`) and used by both sides: clients ping no more often than servers
(`crm_kit.grpc_server`) accept, so a server never closes a client's connection with GOAWAY `too_many_pings`.

Targets come from `<NAME>_SERVICE_ADDR`: `host:port`, a list `ipv4:127.0.0.1:50051,127.0.0.1:50052`, or
`dns:///identity-headless:50051` in Kubernetes (a headless Service, so every pod is an address).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from crm_kit import context
from crm_kit.telemetry import tracing_enabled

IDEMPOTENT_PREFIXES = ("Get", "List", "Search", "Authenticate")
# The request context's key for the monotonic time at which the incoming call's deadline passes.
DEADLINE_KEY = "deadline"


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive, the same for clients and servers. A client pings a connection that has been quiet for
    `time_ms` (also with no call in flight, so a dead peer is noticed before the next call) and drops it when
    the ping is not answered within `timeout_ms`; a server accepts pings that far apart, with margin, and never
    counts them as abuse."""

    time_ms: int = 30_000
    timeout_ms: int = 10_000

    @property
    def server_min_ping_interval_ms(self) -> int:
        return self.time_ms // 2  # timers are not exact: half leaves room

    def client_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def server_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # (gRPC's name for the least time between pings a server accepts; default 5 minutes)
            ("grpc.http2.min_ping_interval_without_data_ms", self.server_min_ping_interval_ms),
            ("grpc.http2.max_pings_without_data", 0),
        ]


KEEPALIVE = Keepalive()


def idempotent_methods(services: Iterable[ServiceDescriptor]) -> list[dict[str, str]]:
    """Reads are retried on another replica when one is unavailable; writes are not (they carry
    Idempotency-Key at the edge instead)."""
    names = []
    for service in services:
        for method in service.methods:
            if method.name.startswith(IDEMPOTENT_PREFIXES):
                names.append({"service": service.full_name, "method": method.name})
    return names


def service_config(services: Iterable[ServiceDescriptor]) -> str:
    config: dict[str, object] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        # Watch every replica's standard health service and pick only those SERVING: a replica told to stop
        # turns NOT_SERVING first (`GrpcServer.stop`), and calls go to the others before it refuses any.
        "healthCheckConfig": {"serviceName": ""},
    }
    methods = idempotent_methods(services)
    if methods:
        config["methodConfig"] = [
            {
                "name": methods,
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def channel_options(
    services: Iterable[ServiceDescriptor] = (), keepalive: Keepalive = KEEPALIVE
) -> list[tuple[str, Any]]:
    return [
        ("grpc.service_config", service_config(services)),
        ("grpc.enable_retries", 1),
        *keepalive.client_options(),
        # Find new replicas and drop dead ones quickly when DNS changes.
        ("grpc.dns_min_time_between_resolutions_ms", 1_000),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def channel(
    target: str,
    services: Iterable[ServiceDescriptor] = (),
    keepalive: Keepalive = KEEPALIVE,
    *,
    pass_deadline: bool = True,
) -> grpc.aio.Channel:
    """A channel to `target`. `pass_deadline=False` is for callers that serve no gRPC call themselves (the
    gateway, which sets its own deadline on every call), sparing them the interceptor."""
    interceptors: list[Any] = [_DeadlineInterceptor()] if pass_deadline else []
    if tracing_enabled():
        interceptors += aio_client_interceptors()
    return grpc.aio.insecure_channel(
        target, options=channel_options(services, keepalive), interceptors=interceptors or None
    )


def remaining_deadline() -> float | None:
    """Seconds left of the incoming call's deadline (None outside a call, or when it has none)."""
    deadline = context.current().extra.get(DEADLINE_KEY)
    return None if not deadline else float(deadline) - time.monotonic()


def timeout(default: float | None) -> float | None:
    """The deadline of an outgoing call: `default`, but never past the incoming call's own deadline."""
    left = remaining_deadline()
    if left is None:
        return default
    left = max(left, 0.001)  # already past: fail at once with DEADLINE_EXCEEDED
    return left if default is None else min(default, left)


class _DeadlineInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
):
    """Every call on a kit channel gets `timeout(its own timeout)`: a service calling another while serving a
    call passes on what is left of that call's deadline, so work nobody waits for any more is not started."""

    @staticmethod
    def _details(details: Any) -> Any:
        bounded = timeout(details.timeout)
        return details if bounded == details.timeout else details._replace(timeout=bounded)

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request_iterator)


def outgoing_metadata(token: str | None = None) -> tuple[tuple[str, str], ...]:
    """The metadata of a call made on behalf of the current caller: their credential, request id and address."""
    ctx = context.current()
    token = token or ctx.extra.get("access_token", "")
    md = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if ctx.request_id:
        md.append(("x-request-id", ctx.request_id))
    client_ip = ctx.extra.get(context.CLIENT_IP_METADATA)
    if client_ip:
        md.append((context.CLIENT_IP_METADATA, client_ip))
    return tuple(md)
