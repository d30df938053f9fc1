"""Identity's tests run it with a real SMTP sink, so they can read the mails it sends."""

import pytest


@pytest.fixture(scope="session")
async def identity_service(test_infra, tmp_path_factory, smtp_sink):
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
