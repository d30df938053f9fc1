"""Proving an address: sign-up mails a single-use token (stored hashed, valid `email_verification_days`);
an accepted invitation proves the mailbox too. A new token can be asked for (by the signed-in user, or by
anyone naming the address, who learns nothing from the answer); it replaces the old one, and mails to one
address are throttled.

An unverified sign-up holds its address only weakly: invitations to it may still be sent, and accepting one
(or signing up again once the verification window has passed) releases it — the unverified user is
deactivated and its email replaced, so the address goes to whoever proved it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm_kit.db import UnitOfWork, utcnow
from crm_kit.errors import AlreadyExists, Conflict, InvalidArgument, TooManyRequests, Unauthenticated
from crm_kit.mail import MailText
from crm_kit.validation import Check
from sqlalchemy import select, update

from crm_identity import models
from crm_identity.domain import throttles
from crm_identity.domain.api_keys import revoke_created_by
from crm_identity.domain.common import caller, random_token, sha256, user_snapshot
from crm_identity.domain.throttles import Throttle
from crm_identity.settings import IdentitySettings

# A sign-up that waits for its address (held by an unproven sign-up) to be verified.
PENDING = "pending"
# Statuses of an account that does not hold its address (yet).
NOT_HOLDING = ("invited", PENDING)
# The user that holds an address (invitations and pending sign-ups wait beside it): one per address (a unique
# index, uq_users_email_holder).
HOLDER = models.User.status.not_in(NOT_HOLDING)

VERIFY_MAIL = {
    "zh-CN": MailText(
        subject="请验证您的邮箱地址",
        body=(
            "{name}，您好：\n\n"
            "您用这个邮箱注册了 CRM（{tenant}）。请用下面的验证码验证邮箱（{days} 天内有效，只能使用一次）：\n\n"
            "{token}\n\n"
            "{link}"
            "如果不是您本人注册，请忽略这封邮件。\n"
        ),
    ),
    "en": MailText(
        subject="Verify your email address",
        body=(
            "Hello {name},\n\n"
            "This address was used to sign up for CRM ({tenant}). Verify it with this token (valid {days} days, "
            "usable once):\n\n"
            "{token}\n\n"
            "{link}"
            "If you did not sign up, ignore this mail.\n"
        ),
    ),
}


RESEND_MAIL = {
    "zh-CN": MailText(
        subject="您的新邮箱验证码",
        body=(
            "{name}，您好：\n\n"
            "有人为 CRM（{tenant}）中的这个邮箱申请了新的验证码。请用下面的验证码验证邮箱"
            "（{days} 天内有效，只能使用一次），之前发出的验证码已失效：\n\n"
            "{token}\n\n"
            "{link}"
            "如果不是您本人申请，请忽略这封邮件；如果您从未注册过 CRM，请不要验证。\n"
        ),
    ),
    "en": MailText(
        subject="Your new email verification token",
        body=(
            "Hello {name},\n\n"
            "A new token was asked for to verify this address for CRM ({tenant}). Verify it with this token "
            "(valid {days} days, usable once); tokens sent before no longer work:\n\n"
            "{token}\n\n"
            "{link}"
            "If you did not ask for it, ignore this mail; if you never signed up for CRM, do not verify.\n"
        ),
    ),
}


def mail_throttle(settings: IdentitySettings, email: str, *, user_id: str = "") -> list[tuple[Throttle, str]]:
    """The counter of verification mails asked for again to one address (the sign-up's own mail is free); a
    signed-in user's own requests have a counter of their own, so strangers asking for the address's mails
    cannot hold theirs back."""
    throttle = Throttle(
        "verification_mail",
        settings.verification_mail_free_sends,
        settings.verification_mail_max_delay_seconds,
        settings.verification_mail_first_delay_seconds,
    )
    return [(throttle, sha256(f"{throttle.scope}:{user_id}" if user_id else f"{throttle.scope}:{email}"))]


@dataclass(frozen=True)
class Mail:
    """A verification mail to send once the transaction has committed."""

    user: models.User
    tenant_name: str
    token: str


async def resend(uow: UnitOfWork, user: models.User, *, days: int) -> Mail:
    """A new token for an unproven address (the previous one stops working), audited."""
    token = start(user, days=days)
    user.version += 1
    await uow.session.flush()
    await uow.session.refresh(user)
    uow.emit(
        events_pb2.VerificationMailResent(user_id=user.id),
        tenant_id=user.tenant_id,
        actor=user_actor(user),
        aggregate_type="user",
        aggregate_id=user.id,
        aggregate_version=user.version,
        action="verification_mail_resent",
    )
    tenant = await uow.session.get(models.Tenant, user.tenant_id)
    return Mail(user=user, tenant_name=tenant.name if tenant else "", token=token)


async def resend_to_me(uow: UnitOfWork, settings: IdentitySettings) -> Mail:
    principal = caller()
    if principal.is_api_key:
        raise InvalidArgument("an API key has no address to verify", reason="not_a_user")
    user = await uow.session.scalar(
        select(models.User)
        .where(models.User.id == principal.actor_id, models.User.tenant_id == principal.tenant_id)
        .with_for_update()
    )
    if user is None or user.status != "active":
        raise Unauthenticated("unknown user", reason="invalid_token")
    if user.email_verified_at is not None:
        raise Conflict("this address is already verified", reason="already_verified")
    mine = mail_throttle(settings, user.email, user_id=user.id)
    if await throttles.claim(uow.session, mine, utcnow()) is not None:
        raise TooManyRequests(
            "a verification mail was sent a moment ago: wait a few minutes before asking again",
            reason="too_many_mails",
        )
    return await resend(uow, user, days=settings.email_verification_days)


async def resend_to_address(
    uow: UnitOfWork, settings: IdentitySettings, email: str
) -> tuple[str, list[Mail]]:
    """The address as understood, and mails for the unproven sign-up holding it, if there is one and its mails
    are not throttled. The same work either way (the address's counter is claimed whether or not anyone
    holds it)."""
    check = Check()
    email = check.email("email", email.strip()).lower()
    check.done()
    # Users first, then the counter: the order every transaction here takes them in (sign-in, sign-up).
    users = await uow.session.scalars(
        select(models.User)
        .where(
            models.User.email == email,
            models.User.status.in_(("active", PENDING)),
            models.User.email_verified_at.is_(None),
        )
        .order_by(models.User.id)
        .with_for_update()
    )
    unproven = users.all()
    if await throttles.claim(uow.session, mail_throttle(settings, email), utcnow()) is not None:
        return email, []
    return email, [await resend(uow, user, days=settings.email_verification_days) for user in unproven]


def start(user: models.User, *, days: int) -> str:
    """Give the user a new verification token (the previous one stops working); returns it."""
    token = random_token()
    user.email_verification_hash = sha256(token)
    user.email_verification_expires_at = utcnow() + dt.timedelta(days=days)
    return token


def window_passed(user: models.User, *, days: int) -> bool:
    return user.email_verified_at is None and user.created_at + dt.timedelta(days=days) <= utcnow()


async def verify(uow: UnitOfWork, token: str, *, days: int) -> models.User:
    if not token:
        raise InvalidArgument.for_field("token", "is required")
    if len(token) > 100:
        raise Unauthenticated("the verification token is not valid or has expired", reason="invalid_token")
    user = await uow.session.scalar(
        select(models.User).where(models.User.email_verification_hash == sha256(token)).with_for_update()
    )
    if (
        user is None
        or user.email_verification_expires_at is None
        or user.email_verification_expires_at <= utcnow()
        or user.status not in ("active", PENDING)
    ):
        raise Unauthenticated("the verification token is not valid or has expired", reason="invalid_token")
    before = user_snapshot(user)
    if user.status == PENDING:
        # The mailbox is proven: the unproven sign-up holding the address gives it up (a verified one keeps it:
        # 409 email_taken, and this sign-up stays pending).
        await claim(uow, user.email, release_fresh=True, days=days)
        user.status = "active"
    user.email_verified_at = utcnow()
    user.email_verification_hash = None
    user.email_verification_expires_at = None
    user.version += 1
    await uow.session.flush()
    await uow.session.refresh(user)
    uow.emit(
        events_pb2.EmailVerified(user_id=user.id),
        tenant_id=user.tenant_id,
        actor=user_actor(user),
        aggregate_type="user",
        aggregate_id=user.id,
        aggregate_version=user.version,
        action="email_verified",
        before=before,
        after=user_snapshot(user),
    )
    return user


async def claim(uow: UnitOfWork, email: str, *, release_fresh: bool, days: int) -> bool:
    """Make `email` free for someone who is about to hold it: a verified holder keeps it (409
    `email_taken`); an unverified one is released — always when the claimant proved the mailbox
    (`release_fresh`), otherwise only once its verification window has passed. False when an unverified
    holder still in its window keeps it (the claimant may wait as a pending sign-up)."""
    holder = await uow.session.scalar(
        select(models.User).where(models.User.email == email, HOLDER).with_for_update()
    )
    if holder is None:
        return True
    if holder.email_verified_at is not None:
        raise AlreadyExists("this email is already registered", reason="email_taken")
    if not (release_fresh or window_passed(holder, days=days)):
        return False
    before = user_snapshot(holder)
    holder.email = f"released.{holder.id}@invalid"
    holder.status = "deactivated"
    holder.email_verification_hash = None
    holder.email_verification_expires_at = None
    holder.version += 1
    await uow.session.execute(
        update(models.RefreshToken)
        .where(models.RefreshToken.user_id == holder.id, models.RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    # Flushed now, so the claimant's row takes the address in a later statement (one holder per address).
    await uow.session.flush()
    await uow.session.refresh(holder)
    uow.emit(
        events_pb2.EmailReleased(user_id=holder.id, email=email),
        tenant_id=holder.tenant_id,
        actor=user_actor(holder),
        aggregate_type="user",
        aggregate_id=holder.id,
        aggregate_version=holder.version,
        action="email_released",
        before=before,
        after=user_snapshot(holder),
    )
    await revoke_created_by(uow, holder)
    return True


def user_actor(user: models.User) -> event_pb2.Actor:
    return event_pb2.Actor(type=event_pb2.ACTOR_TYPE_USER, id=user.id, name=user.name)
