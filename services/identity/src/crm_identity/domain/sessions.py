"""Signing in and staying signed in: passwords, lockout, TOTP, rotating refresh tokens, API keys.

Failures are outcomes, not exceptions, inside the transaction: a failed sign-in must still commit its failure
count and its audit event. The transport raises the returned error after the commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

import pyotp
from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2, identity_pb2
from crm_kit.auth import TokenIssuer
from crm_kit.context import Principal, client_ip
from crm_kit.db import Database, UnitOfWork, driver_of, utcnow
from crm_kit.errors import Conflict, DomainError, InvalidArgument, Unauthenticated
from crm_kit.ids import new_id
from crm_kit.validation import Check
from sqlalchemy import select, update

from crm_identity import models
from crm_identity.domain import throttles, verification
from crm_identity.domain.common import caller, random_token, sha256, user_pb, user_snapshot
from crm_identity.domain.passwords import Passwords, check_password
from crm_identity.domain.throttles import Keyed, Throttle
from crm_identity.settings import IdentitySettings

BAD_CREDENTIALS = "email or password is wrong, or too many attempts: wait a moment and try again"
TOTP_ISSUER = "CRM"
HOLDER = verification.HOLDER
# The password hash of the account holding an address (`HOLDER`), or None: what a sign-in checks against.
# (The statuses are constants of ours, spelt as the unique index's predicate spells them.)
PASSWORD_HASH = "SELECT password_hash FROM users WHERE email = $1 AND status NOT IN ({})".format(
    ", ".join(f"'{status}'" for status in verification.NOT_HOLDING)
)


def bad_credentials() -> Unauthenticated:
    """The one answer to an unknown email, a wrong password and a throttled attempt."""
    return Unauthenticated(BAD_CREDENTIALS, reason="bad_credentials")


@dataclass
class Outcome:
    token: identity_pb2.TokenPair | None = None
    error: DomainError | None = None

    def unwrap(self) -> identity_pb2.TokenPair:
        if self.error is not None:
            raise self.error
        assert self.token is not None
        return self.token


def _user_actor(user: models.User) -> event_pb2.Actor:
    return event_pb2.Actor(type=event_pb2.ACTOR_TYPE_USER, id=user.id, name=user.name)


def _principal(user: models.User) -> Principal:
    return Principal(
        tenant_id=user.tenant_id,
        actor_id=user.id,
        name=user.name,
        role_ids=tuple(user.role_ids or ()),
        department_id=user.department_id or "",
    )


class Sessions:
    def __init__(self, settings: IdentitySettings, passwords: Passwords, issuer: TokenIssuer):
        self.settings = settings
        self.passwords = passwords
        self.issuer = issuer

    # ------------------------------------------------------------ tokens

    def _new_refresh(self, uow: UnitOfWork, user: models.User, family_id: str) -> str:
        token = random_token()
        now = utcnow()
        uow.session.add(
            models.RefreshToken(
                id=new_id(),
                tenant_id=user.tenant_id,
                user_id=user.id,
                family_id=family_id,
                token_hash=sha256(token),
                created_at=now,
                expires_at=now + dt.timedelta(days=self.settings.refresh_token_ttl_days),
            )
        )
        return token

    def _pair(self, uow: UnitOfWork, user: models.User, family_id: str) -> identity_pb2.TokenPair:
        access = self.issuer.issue(_principal(user), ttl_seconds=self.settings.access_token_ttl_seconds)
        return identity_pb2.TokenPair(
            access_token=access.token,
            refresh_token=self._new_refresh(uow, user, family_id),
            token_type="Bearer",
            expires_in=access.expires_in,
        )

    def _failed(self, uow: UnitOfWork, user: models.User | None, email: str, reason: str) -> None:
        uow.emit(
            events_pb2.LoginFailed(email=email, reason=reason),
            tenant_id=user.tenant_id if user else "",
            actor=_user_actor(user) if user else event_pb2.Actor(type=event_pb2.ACTOR_TYPE_USER, name=email),
            aggregate_type="user",
            aggregate_id=user.id if user else "",
            action="login_failed",
            after={"reason": reason},
        )

    def _throttles(self, email: str, ip: str) -> list[tuple[Throttle, str]]:
        """The counters one sign-in attempt touches, with their keys (hashes: no address stored in clear).
        A call that did not come through the gateway has no address: only the account's counters apply."""
        s = self.settings
        first = s.login_first_delay_seconds
        pair = Throttle("account_source", s.login_free_attempts, s.login_max_delay_seconds, first)
        source = Throttle("source", s.login_source_free_attempts, s.login_max_delay_seconds, first)
        account = Throttle("account", s.login_account_free_attempts, s.login_account_max_delay_seconds, first)
        keys = [(pair, sha256(f"{pair.scope}:{email}|{ip}")), (account, sha256(f"{account.scope}:{email}"))]
        if ip:
            keys.append((source, sha256(f"{source.scope}:{ip}")))
        return keys

    async def login(self, db: Database, *, email: str, password: str, totp_code: str) -> Outcome:
        check = Check()
        check.required("email", email)
        check.required("password", password)
        check.done()
        email = email.strip().lower()
        keyed = self._throttles(email, client_ip())
        # The attempt is counted before its password is looked at (throttles.claim: one short transaction
        # that locks the counters), so attempts made at the same instant each see the ones before them: a
        # burst gets no more guesses than the free attempts. The password check (~25 ms of argon2) runs after
        # that commit: sign-ins of one account do not queue behind a lock while it runs.
        pauses = list(throttles.IN_FLIGHT_PAUSES)
        while True:
            try:
                async with db.unit_of_work() as uow:
                    refused_since = await throttles.claim(uow.session, keyed, utcnow())
                    if refused_since is None:
                        # Only the hash is needed now: read on the driver, as the claim was.
                        driver = driver_of(await uow.session.connection())
                        checked_hash = await driver.fetchval(PASSWORD_HASH, email)
                        break
                    if not (pauses and self._in_flight(refused_since)):
                        user = await uow.session.scalar(
                            select(models.User).where(models.User.email == email, HOLDER)
                        )
                        checked_hash = user.password_hash if user else None
                        self._failed(uow, user, email, "throttled")
                        break
            except throttles.Raced:
                continue
            await asyncio.sleep(pauses.pop(0))
        claimed = refused_since is None
        # Unknown, wrong and throttled all cost one argon2 check and get the same answer: nothing tells them
        # apart from outside.
        password_ok = await self.passwords.verify(checked_hash if claimed else None, password)
        if not claimed:
            return Outcome(error=bad_credentials())
        async with db.unit_of_work() as uow:
            return await self._sign_in(uow, email, password, totp_code, password_ok, checked_hash, keyed)

    async def _sign_in(
        self,
        uow: UnitOfWork,
        email: str,
        password: str,
        totp_code: str,
        password_ok: bool,
        checked_hash: str | None,
        keyed: Keyed,
    ) -> Outcome:
        """The attempt is already counted as a failure: a failure only records why; an answer that is no
        failure (the right password) gives the count back."""
        user = (
            await uow.session.execute(
                select(models.User).where(models.User.email == email, HOLDER).with_for_update()
            )
        ).scalar_one_or_none()
        now = utcnow()
        if user is None:
            return self._refused(uow, None, email, "unknown_user", bad_credentials())
        if user.password_hash != checked_hash:
            # The password changed between the check and now: check against the current one.
            password_ok = await self.passwords.verify(user.password_hash, password)
        if not password_ok:
            return self._refused(uow, user, email, "bad_password", bad_credentials())
        keys = [k for _, k in keyed]
        if user.status != "active":
            await throttles.settle(uow.session, give_back=keys)
            return self._refused(
                uow,
                user,
                email,
                "inactive",
                Unauthenticated("this account is not active", reason="account_inactive"),
            )
        if (
            user.email_verified_at is None
            and user.created_at + dt.timedelta(days=self.settings.email_verification_days) <= now
        ):
            await throttles.settle(uow.session, give_back=keys)
            return self._refused(
                uow,
                user,
                email,
                "email_not_verified",
                Unauthenticated(
                    "this address was never verified: ask for a new verification mail",
                    reason="email_not_verified",
                ),
            )
        if user.totp_secret:
            if not totp_code:
                await throttles.settle(uow.session, give_back=keys)
                return self._refused(
                    uow,
                    user,
                    email,
                    "totp_required",
                    Unauthenticated("a two-factor code is required (totp_code)", reason="totp_required"),
                )
            if not self._accept_totp(user, user.totp_secret, totp_code):
                return self._refused(
                    uow,
                    user,
                    email,
                    "bad_totp",
                    Unauthenticated("the two-factor code is wrong", reason="bad_totp"),
                )
        # The account's own counters start again; the client address's (over all accounts) only gets this
        # attempt back.
        await throttles.settle(
            uow.session,
            give_back=[k for t, k in keyed if t.scope == "source"],
            clear=[k for t, k in keyed if t.scope != "source"],
        )
        user.last_login_at = now
        if self.passwords.needs_rehash(user.password_hash or ""):
            user.password_hash = await self.passwords.hash(password)
        uow.emit(
            events_pb2.LoginSucceeded(user_id=user.id, email=email, with_totp=bool(user.totp_secret)),
            tenant_id=user.tenant_id,
            actor=_user_actor(user),
            aggregate_type="user",
            aggregate_id=user.id,
            action="login_succeeded",
        )
        return Outcome(token=self._pair(uow, user, family_id=new_id()))

    @staticmethod
    def _in_flight(counted_at: dt.datetime) -> bool:
        return utcnow() - counted_at < dt.timedelta(seconds=sum(throttles.IN_FLIGHT_PAUSES) + 1)

    def _refused(
        self, uow: UnitOfWork, user: models.User | None, email: str, reason: str, error: DomainError
    ) -> Outcome:
        self._failed(uow, user, email, reason)
        return Outcome(error=error)

    @staticmethod
    def _accept_totp(user: models.User, secret: str, code: str) -> bool:
        """A code is good once: within ±1 step of now and newer than the last one used (no replay)."""
        totp = pyotp.TOTP(secret)
        now_step = int(time.time()) // totp.interval
        for step in (now_step - 1, now_step, now_step + 1):
            if step > user.totp_last_step and pyotp.utils.strings_equal(
                totp.generate_otp(step), code.strip()
            ):
                user.totp_last_step = step
                return True
        return False

    async def refresh(self, uow: UnitOfWork, *, refresh_token: str) -> Outcome:
        if not refresh_token:
            raise InvalidArgument.for_field("refresh_token", "is required")
        session = uow.session
        row = (
            await session.execute(
                select(models.RefreshToken)
                .where(models.RefreshToken.token_hash == sha256(refresh_token))
                .with_for_update()
            )
        ).scalar_one_or_none()
        now = utcnow()
        invalid = Outcome(error=Unauthenticated("refresh token is not valid", reason="invalid_refresh_token"))
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            return invalid
        user = await session.get(models.User, row.user_id)
        if row.used_at is not None:
            # A rotated token came back: someone holds a copy. End the whole sign-in, everywhere.
            await self._revoke_family(uow, row.family_id, now)
            uow.emit(
                events_pb2.RefreshTokenReuseDetected(user_id=row.user_id, family_id=row.family_id),
                tenant_id=row.tenant_id,
                actor=_user_actor(user) if user else None,
                aggregate_type="user",
                aggregate_id=row.user_id,
                action="refresh_token_reused",
            )
            return invalid
        if user is None or user.status != "active":
            return invalid
        row.used_at = now
        return Outcome(token=self._pair(uow, user, family_id=row.family_id))

    async def _revoke_family(self, uow: UnitOfWork, family_id: str, now: dt.datetime) -> None:
        await uow.session.execute(
            update(models.RefreshToken)
            .where(models.RefreshToken.family_id == family_id, models.RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def logout(self, uow: UnitOfWork, *, refresh_token: str) -> None:
        """Ends the sign-in the refresh token belongs to. Unknown tokens are ignored (logout is idempotent)."""
        if not refresh_token:
            raise InvalidArgument.for_field("refresh_token", "is required")
        row = (
            await uow.session.execute(
                select(models.RefreshToken).where(models.RefreshToken.token_hash == sha256(refresh_token))
            )
        ).scalar_one_or_none()
        if row is None or row.revoked_at is not None:
            return
        await self._revoke_family(uow, row.family_id, utcnow())
        user = await uow.session.get(models.User, row.user_id)
        uow.emit(
            events_pb2.LoggedOut(user_id=row.user_id),
            tenant_id=row.tenant_id,
            actor=_user_actor(user) if user else None,
            aggregate_type="user",
            aggregate_id=row.user_id,
            action="logged_out",
        )

    async def revoke_all(self, uow: UnitOfWork, user_id: str) -> None:
        await uow.session.execute(
            update(models.RefreshToken)
            .where(models.RefreshToken.user_id == user_id, models.RefreshToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )

    # ------------------------------------------------------------ invitations

    async def accept_invitation(
        self, uow: UnitOfWork, *, invitation_token: str, password: str, name: str
    ) -> models.User:
        check = Check()
        check.required("invitation_token", invitation_token)
        check_password(check, "password", password)
        check.length("name", name.strip(), max_len=200)
        check.done()
        user = (
            await uow.session.execute(
                select(models.User)
                .where(models.User.invitation_hash == sha256(invitation_token))
                .with_for_update()
            )
        ).scalar_one_or_none()
        if (
            user is None
            or user.status != "invited"
            or user.invitation_expires_at is None
            or user.invitation_expires_at <= utcnow()
        ):
            raise Unauthenticated("the invitation is not valid or has expired", reason="invalid_invitation")
        # The invitee proves the mailbox: an unverified sign-up holding the address gives it up.
        await verification.claim(
            uow, user.email, release_fresh=True, days=self.settings.email_verification_days
        )
        before = user_snapshot(user)
        user.email_verified_at = utcnow()
        user.password_hash = await self.passwords.hash(password)
        user.status = "active"
        user.invitation_hash = None
        user.invitation_expires_at = None
        if name.strip():
            user.name = name.strip()
        user.version += 1
        await uow.session.flush()
        await uow.session.refresh(user)
        uow.emit(
            events_pb2.UserActivated(user=user_pb(user)),
            tenant_id=user.tenant_id,
            actor=_user_actor(user),
            aggregate_type="user",
            aggregate_id=user.id,
            aggregate_version=user.version,
            action="invitation_accepted",
            before=before,
            after=user_snapshot(user),
        )
        return user

    # ------------------------------------------------------------ two-factor

    async def _me(self, uow: UnitOfWork) -> models.User:
        principal = caller()
        if principal.is_api_key:
            raise InvalidArgument("an API key has no two-factor settings", reason="not_a_user")
        user = (
            await uow.session.execute(
                select(models.User)
                .where(models.User.id == principal.actor_id, models.User.tenant_id == principal.tenant_id)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if user is None:
            raise Unauthenticated("unknown user", reason="invalid_token")
        return user

    async def start_totp(self, uow: UnitOfWork) -> tuple[str, str]:
        user = await self._me(uow)
        if user.totp_secret:
            # Replacing an active secret needs what turning it off needs: the current code (DisableTotp).
            raise Conflict(
                "two-factor sign-in is on: turn it off with a current code first", reason="totp_enabled"
            )
        secret = pyotp.random_base32()
        user.totp_pending_secret = secret
        return secret, pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)

    async def confirm_totp(self, uow: UnitOfWork, *, code: str) -> models.User:
        user = await self._me(uow)
        if not user.totp_pending_secret:
            raise InvalidArgument("start two-factor enrolment first", reason="totp_not_started")
        if not code or not self._accept_totp(user, user.totp_pending_secret, code):
            raise InvalidArgument.for_field("code", "is not the current code of the authenticator app")
        user.totp_secret = user.totp_pending_secret
        user.totp_pending_secret = None
        return await self._totp_changed(uow, user, enabled=True)

    async def disable_totp(self, uow: UnitOfWork, *, code: str) -> models.User:
        user = await self._me(uow)
        if not user.totp_secret:
            raise InvalidArgument("two-factor sign-in is not on", reason="totp_not_enabled")
        if not code or not self._accept_totp(user, user.totp_secret, code):
            raise InvalidArgument.for_field("code", "is not the current code of the authenticator app")
        user.totp_secret = None
        return await self._totp_changed(uow, user, enabled=False)

    async def _totp_changed(self, uow: UnitOfWork, user: models.User, *, enabled: bool) -> models.User:
        user.version += 1
        await uow.session.flush()
        await uow.session.refresh(user)
        event = (
            events_pb2.TotpEnabled(user_id=user.id) if enabled else events_pb2.TotpDisabled(user_id=user.id)
        )
        uow.emit(
            event,
            aggregate_type="user",
            aggregate_id=user.id,
            aggregate_version=user.version,
            action="totp_enabled" if enabled else "totp_disabled",
            before={"totp_enabled": not enabled},
            after={"totp_enabled": enabled},
        )
        return user

    # ------------------------------------------------------------ API keys

    async def authenticate_api_key(
        self, uow: UnitOfWork, *, api_key: str
    ) -> identity_pb2.AuthenticateApiKeyResponse:
        if not api_key:
            raise Unauthenticated("an API key is required", reason="missing_credential")
        key = (
            await uow.session.execute(
                select(models.ApiKey).where(models.ApiKey.secret_hash == sha256(api_key))
            )
        ).scalar_one_or_none()
        now = utcnow()
        if key is None or key.revoked_at is not None or (key.expires_at and key.expires_at <= now):
            raise Unauthenticated("the API key is not valid", reason="invalid_api_key")
        if key.last_used_at is None or now - key.last_used_at > dt.timedelta(seconds=60):
            key.last_used_at = now
        principal = Principal(
            tenant_id=key.tenant_id,
            actor_id=key.id,
            actor_type=event_pb2.ACTOR_TYPE_API_KEY,
            name=key.name,
            role_ids=tuple(key.role_ids or ()),
            api_key_id=key.id,
        )
        token = self.issuer.issue(principal, ttl_seconds=self.settings.api_key_token_ttl_seconds)
        return identity_pb2.AuthenticateApiKeyResponse(
            api_key_id=key.id,
            tenant_id=key.tenant_id,
            access_token=token.token,
            expires_in=token.expires_in,
            rate_limit_per_minute=key.rate_limit_per_minute,
        )
