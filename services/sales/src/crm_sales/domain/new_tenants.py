"""A new company works on day one: when identity announces a new tenant (TenantCreated), sales gives it a
default pipeline with the usual stages, in the company's language. The kit's inbox makes a redelivered event a
no-op, and `pipelines.set_up_defaults` does nothing for a company that has a default already; the pipeline is
an ordinary one (PipelineChanged, audited) that its administrator renames, re-stages or replaces."""

from __future__ import annotations

from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2 as identity_events
from crm_kit.db import UnitOfWork
from crm_kit.events.consumer import Consumer

from crm_sales.domain import pipelines


async def on_tenant_created(
    uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload: identity_events.TenantCreated
) -> None:
    await pipelines.set_up_defaults(uow, locale=payload.tenant.locale)


def consumer(name: str) -> Consumer:
    return Consumer(name=name, filter_subjects=[identity_events.TenantCreated], handler=on_tenant_created)
