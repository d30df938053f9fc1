"""Lead conversion (线索转化): account + contact through the customers service's gRPC API, honouring its
duplicate rules (a lead whose company matches an existing account is converted into that account), and an
opportunity here.

The lead is locked first (`leads.take_for_conversion`, `FOR UPDATE NOWAIT` in the conversion's own
transaction), so a concurrent conversion of the same lead is a 409 before anything remote happens. The remote
writes are made with the caller's own credential (their permissions apply there) and each carries an
idempotency key derived from the lead and its version (`leads.conversion_key`): the customers service records
it with the record it creates (crm_kit.idempotency). The opportunity and the lead's new status are written in
the same transaction that holds the lock. If anything after a remote create fails (a crash, a refused
opportunity, the database), the transaction rolls back, the lead is unchanged, and a retry sends the same keys:
the customers service answers with the account and contact it made the first time, so no record is orphaned.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import grpc
from crm.sales.v1 import leads_pb2 as pb
from crm.sales.v1 import pipelines_pb2
from crm_kit import grpc_client, idempotency
from crm_kit.db import Database
from crm_kit.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    from_rpc_error,
)
from crm_kit.policy import Decision

from crm_sales import models
from crm_sales.domain import leads, opportunities, pipelines
from crm_sales.domain.common import People

REMOTE = {
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
}


def _as_domain_error(exc: grpc.aio.AioRpcError) -> Exception:
    """The customers service's refusal, passed on to our caller as the same kind of problem (a 403 stays a 403,
    a blocked duplicate a 409); anything else (unavailable, timeout) is raised as it is."""
    cls = REMOTE.get(exc.code())
    if cls is None:
        return exc
    details = from_rpc_error(exc)
    return cls(
        f"customers: {details.message}", reason=details.reason or None, field_errors=details.field_errors
    )


@dataclass
class Converted:
    lead: models.Lead
    account_id: str
    contact_id: str
    opportunity_id: str
    merged: bool


class Converter:
    def __init__(self, *, db: Database, people: People, channel: Any):
        self.db = db
        self.people = people
        self.channel = channel

    def _stubs(self) -> tuple[Any, Any, Any, Any]:
        from crm.customers.v1 import (
            customers_pb2,
            customers_pb2_grpc,
            data_quality_pb2,
            data_quality_pb2_grpc,
        )

        return (
            customers_pb2,
            customers_pb2_grpc.CustomersServiceStub(self.channel),
            data_quality_pb2,
            data_quality_pb2_grpc.CustomersDataServiceStub(self.channel),
        )

    async def convert(
        self, decision: Decision, request: pb.ConvertLeadRequest, *, now: dt.datetime
    ) -> Converted:
        async with self.db.unit_of_work() as uow:
            lead = await leads.take_for_conversion(uow.session, decision, request.id)
            account_id, contact_id, merged = await self._remote_records(lead, request)
            opportunity_id = ""
            # Without a pipeline named: the company's default one (and its first open stage); a company with no
            # pipeline at all gets no opportunity.
            if request.pipeline_id or await pipelines.default(uow.session) is not None:
                opp = await opportunities.create(
                    uow,
                    pipelines_pb2.CreateOpportunityRequest(
                        name=request.opportunity_name or f"{lead.company or lead.name}",
                        account_id=account_id,
                        contact_id=contact_id,
                        lead_id=lead.id,
                        pipeline_id=request.pipeline_id,
                        amount=request.amount,
                        currency=request.currency,
                        owner_id=lead.owner_id or "",
                    ),
                    people=self.people,
                    now=now,
                    references_checked=True,
                )
                opportunity_id = opp.id
            await leads.mark_converted(
                uow,
                lead,
                account_id=account_id,
                contact_id=contact_id,
                opportunity_id=opportunity_id,
                now=now,
            )
        return Converted(lead, account_id, contact_id, opportunity_id, merged)

    async def _remote_records(
        self, lead: models.Lead, request: pb.ConvertLeadRequest
    ) -> tuple[str, str, bool]:
        """The account (found, chosen or created) and the contact created at the customers service."""
        cpb, customers, dpb, data = self._stubs()
        md = grpc_client.outgoing_metadata()

        def once(step: str) -> tuple[tuple[str, str], ...]:
            return (*md, (idempotency.METADATA_KEY, leads.conversion_key(lead, step)))

        merged = False
        try:
            if request.account_id:
                account_id = (
                    await customers.GetAccount(
                        cpb.GetAccountRequest(id=request.account_id), metadata=md, timeout=10
                    )
                ).account.id
                merged = True
            else:
                wanted = cpb.Account(
                    name=lead.company or lead.name,
                    industry=lead.industry,
                    region=lead.region,
                    phones=[lead.phone] if lead.phone else [],
                    emails=[lead.email] if lead.email else [],
                    source="lead",
                )
                found = await data.CheckDuplicates(
                    dpb.CheckDuplicatesRequest(record_type=cpb.RECORD_TYPE_ACCOUNT, account=wanted),
                    metadata=md,
                    timeout=10,
                )
                if found.candidates:
                    account_id = max(found.candidates, key=lambda c: c.score).id
                    merged = True
                else:
                    account_id = (
                        await customers.CreateAccount(
                            cpb.CreateAccountRequest(account=wanted), metadata=once("account"), timeout=10
                        )
                    ).account.id
            contact = cpb.Contact(
                name=lead.name,
                titles=[lead.title] if lead.title else [],
                phones=[lead.phone] if lead.phone else [],
                emails=[lead.email] if lead.email else [],
                account_ids=[account_id],
                primary_account_id=account_id,
            )
            contact_id = (
                await customers.CreateContact(
                    cpb.CreateContactRequest(contact=contact), metadata=once("contact"), timeout=10
                )
            ).contact.id
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and request.account_id:
                raise InvalidArgument.for_field("account_id", "no such account") from None
            raise _as_domain_error(exc) from None
        return account_id, contact_id, merged
