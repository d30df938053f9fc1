"""Helpers that make customers tests read like what a user does."""

from __future__ import annotations

from crm.customers.v1 import customers_pb2 as pb
from crm.identity.v1 import identity_pb2 as ipb
from stdnum.cn import uscc

from tests.identity.helpers import Company, auth, invite_and_join, rpc_error, sign_up

__all__ = ["Company", "auth", "credit_code", "invite_and_join", "new_account", "role", "rpc_error", "sign_up"]


def credit_code(seed: int) -> str:
    """A valid unified social credit code (check digit included)."""
    body = f"91440300{seed:09d}"[:17]
    return body + uscc.calc_check_digit(body)


async def new_account(
    customers, company: Company, name: str = "华为技术有限公司", md=None, **fields
) -> pb.Account:
    response = await customers.CreateAccount(
        pb.CreateAccountRequest(account=pb.Account(name=name, **fields)), metadata=md or company.md
    )
    return response.account


async def role(identity, company: Company, name: str, permissions: list[dict]) -> str:
    """A role with these permissions ({"object", "actions", "data_scope", "field_rules"}); returns its id."""
    from google.protobuf import json_format

    request = ipb.CreateRoleRequest(name=name)
    for p in permissions:
        json_format.ParseDict(p, request.permissions.add())
    return (await identity.CreateRole(request, metadata=company.md)).role.id


_WITHOUT_DEFAULTS: set[str] = set()


async def without_default_rules(data, tenant_id: str, md) -> None:
    """A new company gets the default duplicate rules (in the background, when customers sees identity's
    TenantCreated). A test about what its own rules do waits for them and deletes them first, as the company's
    administrator may, so its rules act alone."""
    from crm.customers.v1 import data_quality_pb2 as dq
    from crm_customers.domain.new_tenants import DEFAULT_RULES
    from crm_kit.testing import eventually

    if tenant_id in _WITHOUT_DEFAULTS:
        return
    names = {name for *_, zh, en in DEFAULT_RULES for name in (zh, en)}

    async def defaults():
        items = (await data.ListDuplicateRules(dq.ListDuplicateRulesRequest(), metadata=md)).items
        found = [r for r in items if r.name in names]
        return found if len(found) == len(DEFAULT_RULES) else None

    for rule in await eventually(defaults, what="the new company's default duplicate rules"):
        await data.DeleteDuplicateRule(dq.DeleteDuplicateRuleRequest(id=rule.id), metadata=md)
    _WITHOUT_DEFAULTS.add(tenant_id)
