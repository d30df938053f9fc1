"""Fixtures every test area shares: real PostgreSQL and NATS (crm_kit.testing), and running services."""

from __future__ import annotations

import grpc
import pytest
from crm.identity.v1 import identity_pb2_grpc

pytest_plugins = ["crm_kit.testing"]


@pytest.fixture(scope="session")
async def identity_service(test_infra, tmp_path_factory, smtp_sink):
    """Identity with a real SMTP sink, so tests can read the mails it sends (one instance for the whole run:
    the `identity` client below is session-scoped too)."""
    from crm_identity.app import SPEC
    from crm_identity.settings import IdentitySettings
    from crm_kit.testing import running_service

    settings = IdentitySettings(
        environment="test",
        database_url=await test_infra.database("identity"),
        nats_url=test_infra.nats_url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        migrate_on_start=True,
        data_dir=tmp_path_factory.mktemp("identity"),
        smtp_url=smtp_sink.url,
        # A first wait long enough that "refused right after the fifth failure" holds on a loaded machine.
        login_first_delay_seconds=3.0,
    )
    async with running_service(SPEC, settings) as service:
        yield service


@pytest.fixture(scope="session")
async def identity(identity_service):
    """A client of the running identity service, as another service or the gateway holds one."""
    async with grpc.aio.insecure_channel(identity_service.address) as channel:
        yield identity_pb2_grpc.IdentityServiceStub(channel)


# The real customers and sales services of the whole run (their own databases; tests/customers starts
# another customers service of its own). Sales tests, and the kit tests that walk every service, use them.
@pytest.fixture(scope="session")
async def customers_for_sales(test_infra, identity_service):
    """The real customers service, for lead conversion (its own database, apart from tests/customers)."""
    from crm_customers.app import SPEC
    from crm_customers.settings import CustomersSettings
    from crm_kit.testing import running_service

    settings = await test_infra.service_settings(
        CustomersSettings,
        "sales_customers",
        identity_service_addr=identity_service.address,
        # Its own durable consumer of sales events: tests/customers runs another customers on this namespace.
        sales_timeline_consumer="customers-sales-timeline-sales-tests",
        # And its own of new tenants, so both customers services set up every new company's defaults.
        tenant_setup_consumer="customers-tenant-setup-sales-tests",
    )
    async with running_service(SPEC, settings) as service:
        yield service


@pytest.fixture(scope="session")
async def sales_service(test_infra, identity_service, customers_for_sales):
    from crm_kit.testing import running_service
    from crm_sales.app import SPEC
    from crm_sales.settings import SalesSettings

    settings = await test_infra.service_settings(
        SalesSettings,
        "sales",
        identity_service_addr=identity_service.address,
        customers_service_addr=customers_for_sales.address,
        reclaim_interval_seconds=0,
        # Enough for the 200 concurrent claims, and the whole run stays well inside PostgreSQL's 100 connections.
        database_pool_size=8,
    )
    async with running_service(SPEC, settings) as service:
        yield service
