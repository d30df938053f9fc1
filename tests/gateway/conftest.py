"""A gateway in this process, in front of the real identity service (tests/conftest.py starts it), spoken to
with httpx exactly as a web client or a partner would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from crm_gateway.app import create_app
from crm_gateway.settings import GatewaySettings
from crm_kit import infra

PASSWORD = "correct horse battery"


def gateway_database(test_infra: Any) -> str:
    """The URL of a new database for a gateway (created by `running_gateway`, dropped with the run's)."""
    name = f"crm_t{test_infra.run_id}_gw_{uuid.uuid4().hex[:8]}"
    test_infra.databases.append(name)
    return infra.sqlalchemy_url(test_infra.postgres_admin_dsn, name)


def gateway_settings(
    test_infra: Any, identity_address: str = "127.0.0.1:1", **overrides: Any
) -> GatewaySettings:
    """A gateway of its own (with its own new database unless `database_url` is given: pass one gateway's
    URL to another to make them replicas)."""
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": gateway_database(test_infra),
        "migrate_on_start": True,
        "database_pool_size": 3,
        "nats_url": test_infra.nats_url,
        "events_namespace": test_infra.events_namespace,
        "identity_service_addr": identity_address,
        # Services a test does not start are at an address nothing listens on, never a fixed port that a
        # `make run` beside the tests may hold.
        "customers_service_addr": "127.0.0.1:1",
        "sales_service_addr": "127.0.0.1:1",
        "rate_limit_per_tenant": "100000/minute",
        "rate_limit_public": "100000/minute",
        "access_log": "errors",
        **overrides,
    }
    return GatewaySettings(**values)


@asynccontextmanager
async def running_gateway(
    settings: GatewaySettings, client: tuple[str, int] = ("203.0.113.7", 50000)
) -> AsyncIterator[httpx.AsyncClient]:
    name = settings.database_url.rsplit("/", 1)[1]
    admin = infra.asyncpg_dsn(settings.database_url, "postgres")
    await infra.create_database(admin, name, extensions=())
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture(scope="session")
async def api(test_infra, identity_service) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in front of the real identity service."""
    settings = gateway_settings(test_infra, identity_service.address, api_key_cache_seconds=0.5)
    async with running_gateway(settings) as client:
        yield client


@pytest.fixture(scope="session")
async def offline_api(test_infra) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose services are not running: for what the gateway decides on its own."""
    async with running_gateway(gateway_settings(test_infra)) as client:
        yield client


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}@example.com"


class Company:
    """A signed-up tenant and its admin's tokens."""

    def __init__(self, signup: dict[str, Any], email: str, tokens: dict[str, Any]):
        self.tenant = signup["tenant"]
        self.admin = signup["user"]
        self.email = email
        self.tokens = tokens

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}


async def sign_up(api: httpx.AsyncClient, name: str = "华为技术有限公司") -> Company:
    email = unique_email("admin")
    created = await api.post(
        "/api/v1/auth/signup",
        json={"tenant_name": name, "email": email, "password": PASSWORD, "name": "王小明"},
    )
    # 200 or 201: the identity RPCs' names decide (SignUp, CreateToken) while identity's API is being redone.
    assert created.status_code in (200, 201), created.text
    tokens = await api.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    assert tokens.status_code in (200, 201), tokens.text
    return Company(created.json(), email, tokens.json())


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance", "code"} <= body.keys()
    if code is not None:
        assert body["code"] == code, body
    return body
