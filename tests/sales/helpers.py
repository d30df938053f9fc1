"""Small helpers that make sales tests read like what a sales team does."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from crm.common.v1 import event_pb2
from crm.identity.v1 import identity_pb2 as ipb

from tests.identity.helpers import Company, auth, invite_and_join, sign_up

REP_PERMISSIONS = [
    ipb.Permission(object=obj, actions=["create", "read", "update"], data_scope=ipb.DATA_SCOPE_OWN)
    for obj in ("lead", "opportunity", "quote", "contract", "order", "payment", "task", "account", "contact")
] + [
    ipb.Permission(object=obj, actions=["read"], data_scope=ipb.DATA_SCOPE_ALL)
    for obj in ("pipeline", "lead_pool", "product", "price_book", "forecast")
]


@dataclass
class Rep:
    user: ipb.User
    token: ipb.TokenPair

    @property
    def id(self) -> str:
        return self.user.id

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return auth(self.token.access_token)


def bearer(token: ipb.TokenPair) -> dict[str, str]:
    """The REST header of a signed-in user's access token."""
    return {"Authorization": f"Bearer {token.access_token}"}


async def rep_role(identity, company: Company, name: str = "一线销售", permissions=None) -> ipb.Role:
    return (
        await identity.CreateRole(
            ipb.CreateRoleRequest(name=name, permissions=permissions or REP_PERMISSIONS), metadata=company.md
        )
    ).role


async def team(
    identity, n: int, *, name: str = "华为技术有限公司", permissions=None
) -> tuple[Company, list[Rep]]:
    """A company with its admin and `n` sales reps (role: own leads and opportunities)."""
    company = await sign_up(identity, name)
    role = await rep_role(identity, company, permissions=permissions)
    reps = []
    # A few at a time: each join hashes a password (argon2id) in identity.
    for start in range(0, n, 5):
        joined = await asyncio.gather(
            *(invite_and_join(identity, company, role_ids=[role.id]) for _ in range(start, min(n, start + 5)))
        )
        reps.extend(Rep(user, token) for user, token in joined)
    return company, reps


def payloads(
    envelopes: list[event_pb2.EventEnvelope], cls: type
) -> list[tuple[event_pb2.EventEnvelope, Any]]:
    """The envelopes whose payload is a `cls`, each with its payload."""
    out = []
    for envelope in envelopes:
        message = cls()
        if envelope.payload.Unpack(message):
            out.append((envelope, message))
    return out


async def default_pipeline(pipelines, company: Company) -> Any:
    """The default pipeline sales sets up for a new company when it sees identity's TenantCreated (in the
    background: waited for)."""
    from crm.sales.v1 import pipelines_pb2 as ppb
    from crm_kit.testing import eventually

    async def found() -> Any:
        items = (await pipelines.ListPipelines(ppb.ListPipelinesRequest(), metadata=company.md)).items
        return next((p for p in items if p.is_default), None)

    return await eventually(found, what="the new company's default pipeline")


async def new_account(customers_channel, md, name: str = "华为技术有限公司") -> str:
    """An account at the customers service, made by the caller of `md` (who then owns it): what sales'
    records name as their account."""
    from crm.customers.v1 import customers_pb2 as cpb
    from crm.customers.v1 import customers_pb2_grpc

    stub = customers_pb2_grpc.CustomersServiceStub(customers_channel)
    made = await stub.CreateAccount(cpb.CreateAccountRequest(account=cpb.Account(name=name)), metadata=md)
    return made.account.id
