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
