"""Small helpers that make identity tests read like what a user does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
from crm.identity.v1 import identity_pb2 as pb

PASSWORD = "correct horse battery"


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}@example.com"


@dataclass
class Company:
    tenant: pb.Tenant
    admin: pb.User
    token: pb.TokenPair

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return auth(self.token.access_token)


async def sign_up(identity, name: str = "华为技术有限公司", *, locale: str = "") -> Company:
    email = unique_email("admin")
    created = await identity.SignUp(
        pb.SignUpRequest(tenant_name=name, email=email, password=PASSWORD, name="王小明", locale=locale)
    )
    token = (await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))).token
    return Company(created.tenant, created.user, token)


async def invite_and_join(
    identity, company: Company, *, role_ids=(), department_id: str = ""
) -> tuple[pb.User, pb.TokenPair]:
    email = unique_email()
    invited = await identity.CreateUser(
        pb.CreateUserRequest(email=email, name="李雷", role_ids=list(role_ids), department_id=department_id),
        metadata=company.md,
    )
    await identity.AcceptInvitation(
        pb.AcceptInvitationRequest(invitation_token=invited.user.invitation_token, password=PASSWORD)
    )
    token = (await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))).token
    return invited.user, token


async def rpc_error(call) -> grpc.aio.AioRpcError:
    """Await a call that must fail, and return its error."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded but should have failed")
