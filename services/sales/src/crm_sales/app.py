"""The sales service: what it adds to the kit's skeleton — its servicers, its public web-form methods, the
periodic jobs (lead reclaim, overdue instalments, renewal and task reminders), run by one replica at a time,
and the lead import worker."""

from __future__ import annotations

import logging
from pathlib import Path

from crm.customers.v1 import customers_pb2
from crm.sales.v1 import (
    activities_pb2_grpc,
    contracts_pb2_grpc,
    forecasts_pb2_grpc,
    lead_imports_pb2_grpc,
    leads_pb2_grpc,
    pipelines_pb2_grpc,
    quotes_pb2_grpc,
    settings_pb2_grpc,
)
from crm_kit.db import Database
from crm_kit.grpc_server import Servicer
from crm_kit.leader import PeriodicJob
from crm_kit.service import Parts, Runtime, ServiceSpec

from crm_sales.api import activities as activities_api
from crm_sales.api import contracts as contracts_api
from crm_sales.api import lead_imports as lead_imports_api
from crm_sales.api import leads as leads_api
from crm_sales.api import pipelines as pipelines_api
from crm_sales.api import quotes as quotes_api
from crm_sales.api import settings as settings_api
from crm_sales.clock import Clock
from crm_sales.domain import activities, contracts, leads, merges, new_tenants
from crm_sales.domain.common import People
from crm_sales.domain.conversion import Converter
from crm_sales.settings import SalesSettings

MIGRATIONS = Path(__file__).parent / "migrations"
# The advisory lock whose holder runs the periodic jobs (see crm_kit.leader).
JOBS_LOCK = "crm.sales.jobs"
log = logging.getLogger("crm.sales")


async def run_jobs_once(db: Database, clock: Clock) -> dict[str, int]:
    """One run of the periodic jobs over every tenant, in batches (each its own transaction): lead reclaim
    and warnings, overdue instalments, contract renewal reminders."""
    counts = {"reclaimed": 0, "warned": 0, "overdue": 0, "renewal_reminders": 0, "task_reminders": 0}
    while True:
        async with db.unit_of_work() as uow:
            n = await activities.send_reminders(uow, now=clock.now(), tenant_id=None)
        counts["task_reminders"] += n
        if n < 500:
            break
    while True:
        async with db.unit_of_work() as uow:
            r, w = await leads.reclaim(uow, now=clock.now(), tenant_id=None)
        counts["reclaimed"] += r
        counts["warned"] += w
        if r + w < 500:
            break
    while True:
        async with db.unit_of_work() as uow:
            o, n = await contracts.run_jobs(uow, now=clock.now(), tenant_id=None)
        counts["overdue"] += o
        counts["renewal_reminders"] += n
        if o < 500 and n < 500:
            return counts


async def _run_and_log(db: Database, clock: Clock) -> None:
    counts = await run_jobs_once(db, clock)
    if any(counts.values()):
        log.info("sales jobs: %s", counts)


async def build(runtime: Runtime) -> Parts:
    settings = runtime.settings
    assert isinstance(settings, SalesSettings)
    policies = await runtime.policies()
    clock = Clock()
    customers = runtime.channel(
        settings.customers_service_addr, customers_pb2.DESCRIPTOR.services_by_name["CustomersService"]
    )
    # Users at identity, accounts and contacts at customers: what sales' references must name.
    people = People(runtime.identity(), customers=customers)
    converter = Converter(db=runtime.db, people=people, channel=customers)
    leads_servicer = leads_api.LeadsApi(
        db=runtime.db, policies=policies, clock=clock, people=people, settings=settings, converter=converter
    )
    lead_imports = lead_imports_api.LeadImportsApi(
        db=runtime.db, policies=policies, people=people, clock=clock
    )
    pipelines_servicer = pipelines_api.PipelinesApi(
        db=runtime.db, policies=policies, clock=clock, people=people
    )
    parts = Parts(
        servicers=[
            Servicer(
                leads_pb2_grpc.add_LeadsServiceServicer_to_server, leads_servicer, leads_api.SERVICE.full_name
            ),
            Servicer(
                lead_imports_pb2_grpc.add_LeadImportsServiceServicer_to_server,
                lead_imports,
                lead_imports_api.SERVICE.full_name,
            ),
            Servicer(
                pipelines_pb2_grpc.add_PipelinesServiceServicer_to_server,
                pipelines_servicer,
                pipelines_api.SERVICE.full_name,
            ),
            Servicer(
                quotes_pb2_grpc.add_QuotesServiceServicer_to_server,
                quotes_api.QuotesApi(db=runtime.db, policies=policies, clock=clock, people=people),
                quotes_api.SERVICE.full_name,
            ),
            Servicer(
                contracts_pb2_grpc.add_ContractsServiceServicer_to_server,
                contracts_api.ContractsApi(db=runtime.db, policies=policies, clock=clock, people=people),
                contracts_api.SERVICE.full_name,
            ),
            Servicer(
                activities_pb2_grpc.add_ActivitiesServiceServicer_to_server,
                activities_api.ActivitiesApi(db=runtime.db, policies=policies, clock=clock, people=people),
                activities_api.SERVICE.full_name,
            ),
            Servicer(
                forecasts_pb2_grpc.add_ForecastsServiceServicer_to_server,
                activities_api.ForecastsApi(db=runtime.db, policies=policies),
                activities_api.FORECASTS.full_name,
            ),
            Servicer(
                settings_pb2_grpc.add_SalesSettingsServiceServicer_to_server,
                settings_api.SalesSettingsApi(db=runtime.db, policies=policies),
                settings_api.SERVICE.full_name,
            ),
        ],
        public_methods=leads_api.PUBLIC_METHODS,
        # Customers' merges (and their undo) re-point sales' references to accounts and contacts; a new
        # company (identity's TenantCreated) gets its default pipeline.
        consumers=[merges.CONSUMER, new_tenants.consumer(settings.tenant_setup_consumer)],
    )
    parts.clock = clock  # type: ignore[attr-defined]  # tests move time with it
    lead_imports.worker.start()
    parts.on_stop.append(lead_imports.worker.stop)
    if settings.reclaim_interval_seconds > 0:
        # One replica at a time runs the jobs: the leader of the jobs lock on the sales database.
        jobs = PeriodicJob(
            runtime.db.url,
            JOBS_LOCK,
            lambda: _run_and_log(runtime.db, clock),
            interval=settings.reclaim_interval_seconds,
        )
        await jobs.start()
        parts.jobs = jobs  # type: ignore[attr-defined]  # tests watch which replica runs them
        parts.on_stop.append(jobs.stop)
    return parts


SPEC = ServiceSpec(name="sales", settings=SalesSettings, build=build, migrations=MIGRATIONS)
