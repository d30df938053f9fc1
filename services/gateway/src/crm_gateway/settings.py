"""The gateway's settings: the kit's (among them `CRM_DATABASE_URL`, the gateway's own database, and
`CRM_IDEMPOTENCY_TTL_SECONDS`, shared with the services), plus HTTP, limits, idempotency and the address of every
service it routes to."""

from __future__ import annotations

import ipaddress
import os
from typing import Literal

from crm_kit.settings import ServiceSettings
from pydantic import AliasChoices, Field

LOCAL_IDEMPOTENCY_SECRET = "local-only-idempotency-secret"


class GatewaySettings(ServiceSettings):
    service_name: str = "gateway"

    http_host: str = "0.0.0.0"
    http_port: int = 8000
    # The networks of the proxies in front of the gateway (the ingress controller's pods), comma-separated CIDRs.
    # X-Forwarded-For / -Proto are honoured only from a peer in them; the client address is the first address
    # in X-Forwarded-For, read from the right, that is not a trusted proxy (see `clientip.py`). That address is
    # what per-source limits count and what services get as `x-crm-client-ip`. CRM_FORWARDED_ALLOW_IPS is the
    # former name.
    trusted_proxies: str = Field(
        default="127.0.0.1/32,::1/128",
        validation_alias=AliasChoices("CRM_TRUSTED_PROXIES", "CRM_FORWARDED_ALLOW_IPS", "trusted_proxies"),
    )
    # Browser origins allowed to call the API (comma-separated); empty means no CORS headers at all.
    cors_origins: str = ""
    # One JSON line per request costs ~50 us of CPU (a tenth of a request): by default only failed (>= 400)
    # and slow (>= 1 s) requests are logged; "all" logs every request, "off" none.
    access_log: Literal["all", "errors", "off"] = "errors"

    # Every request body larger than this is refused with 413 before it is read.
    max_body_bytes: int = 1_048_576
    # Deadline of one gRPC call made for a request.
    grpc_timeout_seconds: float = 10.0
    # File routes (imports, exports): the largest upload, and the deadline of one file transfer.
    max_upload_bytes: int = 512 * 1024 * 1024
    file_timeout_seconds: float = 3600.0

    # `limits` notation ("1200/minute"); per tenant on every authenticated route.
    rate_limit_per_tenant: str = "1200/minute"
    # Per client IP on the routes that take no credential (sign-up, token, refresh...); empty turns it off.
    rate_limit_public: str = "600/minute"
    # Per client IP: API keys identity refused. Past it, unknown keys from that address are refused with 429
    # before identity is asked (known good keys keep working from their cache).
    rate_limit_invalid_api_keys: str = "30/minute"
    # Used for an API key whose own rate_limit_per_minute is 0.
    api_key_default_rate_limit_per_minute: int = 600
    # How long a verified API key is trusted without asking identity again: a revoked key stops within this.
    api_key_cache_seconds: float = 30.0

    # The deployment's NATS namespace (shared with crm_kit.events), for following identity's events.
    events_namespace: str = ""
    # Idempotency-Key entries live in the gateway's database for `idempotency_ttl_seconds` (the kit's setting,
    # which the services' own copy of each keyed write uses too).
    # A request holding an Idempotency-Key longer than this is taken to have died with its replica.
    idempotency_lock_seconds: float = 60.0
    # Keys the fingerprints and the encryption of stored responses; every replica must share it.
    idempotency_secret: str = LOCAL_IDEMPOTENCY_SECRET

    # The services behind the gateway. A service not deployed yet keeps its default and is simply unused.
    customers_service_addr: str = Field(
        default="127.0.0.1:50052",
        validation_alias=AliasChoices("CUSTOMERS_SERVICE_ADDR", "CRM_CUSTOMERS_SERVICE_ADDR"),
    )
    sales_service_addr: str = Field(
        default="127.0.0.1:50053",
        validation_alias=AliasChoices("SALES_SERVICE_ADDR", "CRM_SALES_SERVICE_ADDR"),
    )

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if any(net.prefixlen == 0 for net in self.trusted_proxy_networks):
            problems.append("CRM_TRUSTED_PROXIES must name the ingress's networks, not every address")
        if self.idempotency_secret == LOCAL_IDEMPOTENCY_SECRET or len(self.idempotency_secret) < 32:
            problems.append("CRM_IDEMPOTENCY_SECRET must be set to a random string of 32+ characters")
        return problems

    def service_addr(self, name: str) -> str:
        """`<NAME>_SERVICE_ADDR` of a service, e.g. "identity" -> identity_service_addr."""
        value = getattr(self, f"{name}_service_addr", None) or os.environ.get(f"{name.upper()}_SERVICE_ADDR")
        if not value:
            raise ValueError(f"no address for service {name!r}: set {name.upper()}_SERVICE_ADDR")
        return str(value)

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        nets = []
        for part in self.trusted_proxies.split(","):
            part = part.strip()
            if part == "*":
                nets += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            elif part:
                nets.append(ipaddress.ip_network(part, strict=False))
        return nets

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
