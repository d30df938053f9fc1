"""Sales tests: the gateway and stubs in front of the run's sales service (tests/conftest.py starts it, next to
identity and the customers service it converts leads into)."""

from __future__ import annotations

import grpc
import pytest
from crm.sales.v1 import leads_pb2_grpc, pipelines_pb2_grpc


@pytest.fixture(scope="module")
async def api(test_infra, identity_service, sales_service):
    """The gateway in front of sales and identity, spoken to as a web client would (end-to-end tests).
    Every JSON answer is checked against its schema in the gateway's /openapi.json (tests/sales/answers.py)."""
    from tests.gateway.conftest import gateway_settings, running_gateway
    from tests.sales.answers import check_answers

    settings = gateway_settings(
        test_infra, identity_service.address, sales_service_addr=sales_service.address
    )
    async with running_gateway(settings) as client:
        check_answers(client)
        yield client


@pytest.fixture
def clock(sales_service):
    """The service's clock; a test may move it forward, and it is put back afterwards."""
    clock = sales_service.parts.clock
    yield clock
    clock.reset()


@pytest.fixture(scope="session")
async def sales_channel(sales_service):
    async with grpc.aio.insecure_channel(sales_service.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def leads(sales_channel):
    return leads_pb2_grpc.LeadsServiceStub(sales_channel)


@pytest.fixture(scope="session")
def lead_imports(sales_channel):
    from crm.sales.v1 import lead_imports_pb2_grpc

    return lead_imports_pb2_grpc.LeadImportsServiceStub(sales_channel)


@pytest.fixture(scope="session")
def pipelines(sales_channel):
    return pipelines_pb2_grpc.PipelinesServiceStub(sales_channel)


@pytest.fixture(scope="session")
def quotes(sales_channel):
    from crm.sales.v1 import quotes_pb2_grpc

    return quotes_pb2_grpc.QuotesServiceStub(sales_channel)


@pytest.fixture(scope="session")
def contracts(sales_channel):
    from crm.sales.v1 import contracts_pb2_grpc

    return contracts_pb2_grpc.ContractsServiceStub(sales_channel)


@pytest.fixture(scope="session")
async def customers_channel(customers_for_sales):
    async with grpc.aio.insecure_channel(customers_for_sales.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def activities(sales_channel):
    from crm.sales.v1 import activities_pb2_grpc

    return activities_pb2_grpc.ActivitiesServiceStub(sales_channel)


@pytest.fixture(scope="session")
def forecasts(sales_channel):
    from crm.sales.v1 import forecasts_pb2_grpc

    return forecasts_pb2_grpc.ForecastsServiceStub(sales_channel)


@pytest.fixture
def outbox(sales_service):
    """The event types the sales service recorded for an aggregate (what the relay publishes)."""
    from crm_kit.testing import recorded_events

    return lambda aggregate_id: recorded_events(sales_service.runtime.db, aggregate_id)
