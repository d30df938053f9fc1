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
