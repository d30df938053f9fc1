"""gRPC channels to other services: client-side round robin over every replica, bounded retries of
idempotent calls, tracing, and the caller's credential and request id passed on.

Targets come from `<NAME>_SERVICE_ADDR`: `host:port`, a list `ipv4:127.0.0.1:50051,127.0.0.1:50052`, or
`dns:///identity-headless:50051` in Kubernetes (a headless Service, so every pod is an address).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from crm_kit import context
from crm_kit.telemetry import tracing_enabled

IDEMPOTENT_PREFIXES = ("Get", "List", "Search", "Authenticate")


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


def channel(target: str, services: Iterable[ServiceDescriptor] = ()) -> grpc.aio.Channel:
    options = [
        ("grpc.service_config", service_config(services)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        # Find new replicas and drop dead ones quickly when DNS changes.
        ("grpc.dns_min_time_between_resolutions_ms", 1_000),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    interceptors = aio_client_interceptors() if tracing_enabled() else None
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def outgoing_metadata(token: str | None = None) -> tuple[tuple[str, str], ...]:
    """The metadata of a call made on behalf of the current caller: their credential and request id."""
    ctx = context.current()
    token = token or ctx.extra.get("access_token", "")
    md = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if ctx.request_id:
        md.append(("x-request-id", ctx.request_id))
    return tuple(md)
