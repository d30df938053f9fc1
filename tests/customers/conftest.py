"""The customers service in this process, in front of the real identity service (tests/conftest.py), on
real PostgreSQL and NATS."""

from __future__ import annotations

import grpc
import pytest
from crm.customers.v1 import customers_pb2_grpc


@pytest.fixture(scope="session")
async def customers_service(test_infra, identity_service):
    from crm_customers.app import SPEC
    from crm_customers.settings import CustomersSettings
    from crm_kit.testing import running_service

    settings = await test_infra.service_settings(
        CustomersSettings, "customers", identity_service_addr=identity_service.address
    )
    async with running_service(SPEC, settings) as service:
        yield service


@pytest.fixture(scope="session")
async def customers(customers_service):
    """A client of the running customers service, as the gateway holds one."""
    async with grpc.aio.insecure_channel(customers_service.address) as channel:
        yield customers_pb2_grpc.CustomersServiceStub(channel)
