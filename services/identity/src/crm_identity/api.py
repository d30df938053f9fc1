"""The gRPC transport of identity: checks permission, opens the unit of work, calls the domain, converts.
No business rules live here."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from crm.identity.v1 import identity_pb2 as pb
from crm.identity.v1 import identity_pb2_grpc
from crm_kit.auth import SigningKeys, TokenIssuer
from crm_kit.db import Database
from crm_kit.mail import Mailer
from crm_kit.policy import PolicyCache
from google.protobuf import struct_pb2

from crm_identity import models
from crm_identity.domain import api_keys, audit, departments, roles, tenants, throttles, users, verification
from crm_identity.domain.common import (
    api_key_pb,
    authorize,
    caller,
    department_pb,
    role_pb,
    tenant_pb,
    user_pb,
)
from crm_identity.domain.passwords import Passwords
from crm_identity.domain.sessions import Sessions
from crm_identity.settings import IdentitySettings

SERVICE = pb.DESCRIPTOR.services_by_name["IdentityService"]
PUBLIC_METHODS = {
    f"/{SERVICE.full_name}/{name}"
    for name in (
        "SignUp",
        "CreateToken",
        "RefreshToken",
        "RevokeToken",
        "AcceptInvitation",
        "VerifyEmail",
        "ResendVerificationByEmail",
        "AuthenticateApiKey",
        "GetJwks",
    )
}


class IdentityApi(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self,
        *,
        settings: IdentitySettings,
        db: Database,
        keys: SigningKeys,
        policies: PolicyCache,
        passwords: Passwords,
    ):
        self.settings = settings
        self.db = db
        self.keys = keys
        self.policies = policies
        self.passwords = passwords
        self.mailer = Mailer.from_settings(settings)
        issuer = TokenIssuer(
            keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=settings.access_token_ttl_seconds,
        )
        self.sessions = Sessions(settings, passwords, issuer)
        # Mails sent after the answer (kept here so they are not collected half-way).
        self._mailing: set[asyncio.Task[bool]] = set()

    async def _user_pb(self, user, invitation_token: str = "") -> pb.User:  # type: ignore[no-untyped-def]
        message = user_pb(user)
        # Side information of the invitation's answer only (never in events, reads or lists).
        message.invitation_token = invitation_token
        decision = await self.policies.decide(caller(), "user", "read")
        return decision.redact_message(message)

    # ------------------------------------------------------------ sign-up and sign-in

    async def SignUp(self, request, context):
        tenant, user, token = await throttles.in_transaction(
            self.db,
            lambda uow: tenants.sign_up(
                uow,
                tenant_name=request.tenant_name,
                email=request.email,
                password=request.password,
                name=request.name,
                locale=request.locale,
                passwords=self.passwords,
                settings=self.settings,
            ),
        )
        # After the commit, and never failing the sign-up: a mail that cannot go is logged.
        await self._mail_token(verification.Mail(user, tenant.name, token), verification.VERIFY_MAIL)
        return pb.SignUpResponse(tenant=tenant_pb(tenant), user=user_pb(user))

    async def CreateToken(self, request, context):
        outcome = await self.sessions.login(
            self.db, email=request.email, password=request.password, totp_code=request.totp_code
        )
        return pb.CreateTokenResponse(token=outcome.unwrap())

    async def RefreshToken(self, request, context):
        async with self.db.unit_of_work() as uow:
            outcome = await self.sessions.refresh(uow, refresh_token=request.refresh_token)
        return pb.RefreshTokenResponse(token=outcome.unwrap())

    async def RevokeToken(self, request, context):
        async with self.db.unit_of_work() as uow:
            await self.sessions.logout(uow, refresh_token=request.refresh_token)
        return pb.RevokeTokenResponse()

    async def AcceptInvitation(self, request, context):
        async with self.db.unit_of_work() as uow:
            user = await self.sessions.accept_invitation(
                uow, invitation_token=request.invitation_token, password=request.password, name=request.name
            )
        return pb.AcceptInvitationResponse(user=user_pb(user))

    async def VerifyEmail(self, request, context):
        async with self.db.unit_of_work() as uow:
            user = await verification.verify(uow, request.token, days=self.settings.email_verification_days)
        return pb.VerifyEmailResponse(user=user_pb(user))

    async def ResendVerificationByEmail(self, request, context):
        email, mails = await throttles.in_transaction(
            self.db, lambda uow: verification.resend_to_address(uow, self.settings, request.email)
        )
        # Sent after the answer: how long an SMTP server takes must not tell whether the address is held.
        for mail in mails:
            task = asyncio.create_task(self._mail_token(mail, verification.RESEND_MAIL))
            self._mailing.add(task)
            task.add_done_callback(self._mailing.discard)
        return pb.ResendVerificationByEmailResponse(email=email)

    async def ResendVerification(self, request, context):
        mail = await throttles.in_transaction(
            self.db, lambda uow: verification.resend_to_me(uow, self.settings)
        )
        await self._mail_token(mail, verification.RESEND_MAIL)
        return pb.ResendVerificationResponse(email=mail.user.email)

    async def _mail_token(self, mail: verification.Mail, texts: Mapping[str, verification.MailText]) -> bool:
        url = self.settings.verify_email_url
        return await self.mailer.send(
            mail.user.email,
            texts,
            locale=mail.user.locale,
            name=mail.user.name,
            tenant=mail.tenant_name,
            token=mail.token,
            days=str(self.settings.email_verification_days),
            link=f"{url}{mail.token}\n\n" if url else "",
        )

    async def AuthenticateApiKey(self, request, context):
        async with self.db.unit_of_work() as uow:
            return await self.sessions.authenticate_api_key(uow, api_key=request.api_key)

    async def GetJwks(self, request, context):
        jwks = struct_pb2.Struct()
        jwks.update(self.keys.jwks())
        return pb.GetJwksResponse(jwks=jwks)

    # ------------------------------------------------------------ the caller

    async def GetMe(self, request, context):
        principal = caller()
        view = await self.policies.get(principal.tenant_id)
        async with self.db.read() as session:
            tenant = await session.get(models.Tenant, principal.tenant_id)
            me = None if principal.is_api_key else await users.get(session, principal.actor_id)
        return pb.GetMeResponse(
            user=user_pb(me) if me else None,
            tenant=tenant_pb(tenant) if tenant else None,
            permissions=view.effective_permissions(principal),
        )

    async def GetPolicy(self, request, context):
        async with self.db.read() as session:
            policy = await roles.load_policy(session, caller().tenant_id)
        return pb.GetPolicyResponse(policy=policy)

    async def StartTotpEnrollment(self, request, context):
        async with self.db.unit_of_work() as uow:
            secret, uri = await self.sessions.start_totp(uow)
        return pb.StartTotpEnrollmentResponse(secret=secret, provisioning_uri=uri)

    async def ConfirmTotpEnrollment(self, request, context):
        async with self.db.unit_of_work() as uow:
            user = await self.sessions.confirm_totp(uow, code=request.code)
        return pb.ConfirmTotpEnrollmentResponse(user=user_pb(user))

    async def DisableTotp(self, request, context):
        async with self.db.unit_of_work() as uow:
            user = await self.sessions.disable_totp(uow, code=request.code)
        return pb.DisableTotpResponse(user=user_pb(user))

    # ------------------------------------------------------------ users

    async def CreateUser(self, request, context):
        await authorize(self.policies, "user", "create")
        async with self.db.unit_of_work() as uow:
            user, token = await users.invite(uow, request, ttl_days=self.settings.invitation_ttl_days)
        return pb.CreateUserResponse(user=await self._user_pb(user, invitation_token=token))

    async def GetUser(self, request, context):
        await authorize(self.policies, "user", "read")
        async with self.db.read() as session:
            user = await users.get(session, request.id)
        return pb.GetUserResponse(user=await self._user_pb(user))

    async def ListUsers(self, request, context):
        decision = await authorize(self.policies, "user", "read")
        async with self.db.read() as session:
            rows, cursor = await users.list_users(session, request)
        return pb.ListUsersResponse(
            items=[decision.redact_message(user_pb(u)) for u in rows], next_cursor=cursor
        )

    async def UpdateUser(self, request, context):
        decision = await authorize(self.policies, "user", "update")
        decision.check_writable(request.update_mask.paths)
        async with self.db.unit_of_work() as uow:
            user = await users.update(uow, request)
        return pb.UpdateUserResponse(user=await self._user_pb(user))

    async def ActivateUser(self, request, context):
        await authorize(self.policies, "user", "update")
        async with self.db.unit_of_work() as uow:
            user = await users.set_active(uow, request.id, active=True)
        return pb.ActivateUserResponse(user=await self._user_pb(user))

    async def DeactivateUser(self, request, context):
        await authorize(self.policies, "user", "update")
        async with self.db.unit_of_work() as uow:
            user = await users.set_active(uow, request.id, active=False)
            await self.sessions.revoke_all(uow, user.id)
            await api_keys.revoke_created_by(uow, user)
        return pb.DeactivateUserResponse(user=await self._user_pb(user))

    # ------------------------------------------------------------ departments

    async def CreateDepartment(self, request, context):
        await authorize(self.policies, "department", "create")
        async with self.db.unit_of_work() as uow:
            dept = await departments.create(uow, request)
        self.policies.invalidate(caller().tenant_id)
        return pb.CreateDepartmentResponse(department=department_pb(dept))

    async def GetDepartment(self, request, context):
        await authorize(self.policies, "department", "read")
        async with self.db.read() as session:
            dept = await departments.get(session, request.id)
        return pb.GetDepartmentResponse(department=department_pb(dept))

    async def ListDepartments(self, request, context):
        await authorize(self.policies, "department", "read")
        async with self.db.read() as session:
            rows, cursor = await departments.list_departments(session, request)
        return pb.ListDepartmentsResponse(items=[department_pb(d) for d in rows], next_cursor=cursor)

    async def UpdateDepartment(self, request, context):
        await authorize(self.policies, "department", "update")
        async with self.db.unit_of_work() as uow:
            dept = await departments.update(uow, request)
        self.policies.invalidate(caller().tenant_id)
        return pb.UpdateDepartmentResponse(department=department_pb(dept))

    async def DeleteDepartment(self, request, context):
        await authorize(self.policies, "department", "delete")
        async with self.db.unit_of_work() as uow:
            await departments.delete(uow, request.id, expected_version=request.expected_version)
        self.policies.invalidate(caller().tenant_id)
        return pb.DeleteDepartmentResponse()

    # ------------------------------------------------------------ roles

    async def CreateRole(self, request, context):
        await authorize(self.policies, "role", "create")
        async with self.db.unit_of_work() as uow:
            role = await roles.create(uow, request)
        self.policies.invalidate(caller().tenant_id)
        return pb.CreateRoleResponse(role=role_pb(role))

    async def GetRole(self, request, context):
        await authorize(self.policies, "role", "read")
        async with self.db.read() as session:
            role = await roles.get(session, request.id)
        return pb.GetRoleResponse(role=role_pb(role))

    async def ListRoles(self, request, context):
        await authorize(self.policies, "role", "read")
        async with self.db.read() as session:
            rows, cursor = await roles.list_roles(session, request)
        return pb.ListRolesResponse(items=[role_pb(r) for r in rows], next_cursor=cursor)

    async def UpdateRole(self, request, context):
        await authorize(self.policies, "role", "update")
        async with self.db.unit_of_work() as uow:
            role = await roles.update(uow, request)
        self.policies.invalidate(caller().tenant_id)
        return pb.UpdateRoleResponse(role=role_pb(role))

    async def DeleteRole(self, request, context):
        await authorize(self.policies, "role", "delete")
        async with self.db.unit_of_work() as uow:
            await roles.delete(uow, request.id, expected_version=request.expected_version)
        self.policies.invalidate(caller().tenant_id)
        return pb.DeleteRoleResponse()

    # ------------------------------------------------------------ API keys

    async def CreateApiKey(self, request, context):
        await authorize(self.policies, "api_key", "create")
        async with self.db.unit_of_work() as uow:
            key, secret = await api_keys.create(
                uow, request, default_rate=self.settings.default_api_key_rate_limit
            )
        # The secret is side information of this answer only (never in events, reads or lists).
        created = api_key_pb(key)
        created.secret = secret
        return pb.CreateApiKeyResponse(api_key=created)

    async def GetApiKey(self, request, context):
        await authorize(self.policies, "api_key", "read")
        async with self.db.read() as session:
            key = await api_keys.get(session, request.id)
        return pb.GetApiKeyResponse(api_key=api_key_pb(key))

    async def ListApiKeys(self, request, context):
        await authorize(self.policies, "api_key", "read")
        async with self.db.read() as session:
            rows, cursor = await api_keys.list_keys(session, request)
        return pb.ListApiKeysResponse(items=[api_key_pb(k) for k in rows], next_cursor=cursor)

    async def RevokeApiKey(self, request, context):
        await authorize(self.policies, "api_key", "delete")
        async with self.db.unit_of_work() as uow:
            key = await api_keys.revoke(uow, request.id)
        return pb.RevokeApiKeyResponse(api_key=api_key_pb(key))

    # ------------------------------------------------------------ audit

    async def ListAuditEvents(self, request, context):
        await authorize(self.policies, "audit_event", "read")
        async with self.db.read() as session:
            rows, cursor = await audit.list_events(session, request)
        return pb.ListAuditEventsResponse(items=[audit.audit_pb(r) for r in rows], next_cursor=cursor)
