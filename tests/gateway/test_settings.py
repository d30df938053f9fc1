"""The gateway's settings come from the environment and refuse an insecure production start."""

from __future__ import annotations

import pytest
from crm_gateway.settings import GatewaySettings
from pydantic import ValidationError


def test_defaults_and_service_addresses(monkeypatch):
    monkeypatch.setenv("CUSTOMERS_SERVICE_ADDR", "dns:///customers-headless:50051")
    monkeypatch.setenv("MARKETING_SERVICE_ADDR", "marketing:50051")
    monkeypatch.setenv("CRM_HTTP_PORT", "8080")
    s = GatewaySettings()
    assert s.http_port == 8080
    assert s.rate_limit_per_tenant == "1200/minute"
    assert s.service_addr("customers") == "dns:///customers-headless:50051"
    assert s.service_addr("marketing") == "marketing:50051"  # a service added later needs no settings change
    with pytest.raises(ValueError, match="REPORTING_SERVICE_ADDR"):
        s.service_addr("reporting")


PRODUCTION_DB = "postgresql://gateway:secret@postgres:5432/crm_gateway"
NATS = {"nats_url": "tls://nats:4222", "nats_user": "crm-gateway", "nats_password": "p" * 24}


def test_production_needs_a_real_idempotency_secret_and_its_database():
    with pytest.raises(ValidationError, match="CRM_IDEMPOTENCY_SECRET"):
        GatewaySettings(environment="production", database_url=PRODUCTION_DB, **NATS)
    with pytest.raises(ValidationError, match="CRM_DATABASE_URL"):
        GatewaySettings(environment="production", idempotency_secret="x" * 40, **NATS)
    s = GatewaySettings(
        environment="production",
        idempotency_secret="x" * 40,
        database_url=PRODUCTION_DB,
        trusted_proxies="10.0.0.0/8",
        **NATS,
    )
    assert s.environment == "production"
    with pytest.raises(ValidationError, match="CRM_TRUSTED_PROXIES"):
        GatewaySettings(**{**s.model_dump(), "trusted_proxies": "*"})


def test_trusted_proxies_keeps_its_former_name(monkeypatch):
    monkeypatch.setenv("CRM_FORWARDED_ALLOW_IPS", "10.1.0.0/16")
    assert [str(n) for n in GatewaySettings().trusted_proxy_networks] == ["10.1.0.0/16"]
