"""The customers service: what it adds to the kit's skeleton."""

from __future__ import annotations

from pathlib import Path

from crm.customers.v1 import customers_pb2_grpc
from crm_kit.events.consumer import Consumer
from crm_kit.grpc_server import Servicer
from crm_kit.leader import PeriodicJob
from crm_kit.service import Parts, Runtime, ServiceSpec

from crm_customers.api import SERVICE, CustomersApi
from crm_customers.data_api import DataParts
from crm_customers.domain import new_tenants, recycle_bin, sales_timeline
from crm_customers.settings import CustomersSettings

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(runtime: Runtime) -> Parts:
    policies = await runtime.policies()
    api = CustomersApi(db=runtime.db, policies=policies, identity=runtime.identity())
    servicers = [Servicer(customers_pb2_grpc.add_CustomersServiceServicer_to_server, api, SERVICE.full_name)]
    data = DataParts(runtime.db, policies)  # duplicates, merges, imports, exports (+ their worker)
    settings = runtime.settings
    assert isinstance(settings, CustomersSettings)
    # Purges what stayed in the recycle bin past its tenant's retention; one replica at a time.
    purge = PeriodicJob(
        settings.database_url,
        recycle_bin.JOB_NAME,
        lambda: recycle_bin.purge_expired(runtime.db),
        interval=settings.recycle_bin_purge_interval_seconds or 3600.0,
    )
    if settings.recycle_bin_purge_interval_seconds > 0:
        await purge.start()
    # Sales events that belong on an account's timeline (opportunities, quotes, contracts, orders, payments).
    timeline = Consumer(
        name=settings.sales_timeline_consumer,
        filter_subjects=list(sales_timeline.EVENTS),
        handler=sales_timeline.record,
    )
    # A new company (identity's TenantCreated) gets its default duplicate rules.
    tenant_setup = new_tenants.consumer(settings.tenant_setup_consumer)
    parts = Parts(
        servicers=[*servicers, data.servicer],
        consumers=[timeline, tenant_setup],
        on_stop=[data.stop, purge.stop],
    )
    return parts


SPEC = ServiceSpec(name="customers", settings=CustomersSettings, build=build, migrations=MIGRATIONS)
