"""A new verification mail when the first one is lost: for the signed-in user, and publicly by address without
telling whether the address is held. The older token stops working; mails to one address are throttled.
Mails are read from the real SMTP sink."""

from __future__ import annotations

import asyncio

import grpc
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.errors import from_rpc_error
from crm_kit.testing import eventually, recorded_events

from tests.identity.helpers import PASSWORD, auth, rpc_error, sign_up, unique_email
from tests.identity.test_throttling_and_verification import token_in


def mails_to(smtp_sink, address: str) -> list:
    return [m for m in smtp_sink.messages if address in str(m["To"])]


async def signed_up(identity, smtp_sink, locale: str = "en") -> tuple[str, pb.SignUpResponse, str]:
    email = unique_email("resend")
    created = await identity.SignUp(
        pb.SignUpRequest(tenant_name="Acme", email=email, password=PASSWORD, name="Ann", locale=locale)
    )
    return email, created, token_in(await smtp_sink.mail_to(email))


async def test_the_signed_in_user_gets_a_new_token_and_the_old_one_stops_working(
    identity, identity_service, smtp_sink
):
    email, created, first = await signed_up(identity, smtp_sink)
    token = (await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))).token
    me = auth(token.access_token)

    sent = await identity.ResendVerification(pb.ResendVerificationRequest(), metadata=me)
    assert sent.email == email
    await eventually(lambda: len(mails_to(smtp_sink, email)) == 2, what="the second mail")
    mail = await smtp_sink.mail_to(email)
    assert mail["Subject"] == "Your new email verification token"
    second = token_in(mail)
    assert second != first
    stale = await rpc_error(identity.VerifyEmail(pb.VerifyEmailRequest(token=first)))
    assert from_rpc_error(stale).reason == "invalid_token"
    assert (await identity.VerifyEmail(pb.VerifyEmailRequest(token=second))).user.email_verified

    # Audited; and a proven address has nothing left to verify.
    events = await recorded_events(identity_service.runtime.db, created.user.id)
    assert "crm.identity.v1.VerificationMailResent" in [e.type for e in events]
    done = await rpc_error(identity.ResendVerification(pb.ResendVerificationRequest(), metadata=me))
    assert from_rpc_error(done).reason == "already_verified"


async def test_asking_by_address_answers_the_same_whoever_holds_it(identity, smtp_sink):
    unverified, _, first = await signed_up(identity, smtp_sink, locale="zh-CN")
    verified = (await sign_up(identity)).admin.email
    await identity.VerifyEmail(pb.VerifyEmailRequest(token=token_in(await smtp_sink.mail_to(verified))))
    unknown = unique_email("nobody")
    before = {a: len(mails_to(smtp_sink, a)) for a in (unverified, verified, unknown)}

    answers = [
        await identity.ResendVerificationByEmail(pb.ResendVerificationByEmailRequest(email=address))
        for address in (unverified, verified, unknown, unverified.upper())
    ]
    # The same answer for each (the address as understood).
    assert [a.email for a in answers] == [unverified, verified, unknown, unverified]
    # Only the unproven sign-up gets mail (in its language); asked twice, the last token is the good one.
    await eventually(lambda: len(mails_to(smtp_sink, unverified)) == before[unverified] + 2, what="two mails")
    await asyncio.sleep(0.5)
    assert len(mails_to(smtp_sink, verified)) == before[verified]
    assert len(mails_to(smtp_sink, unknown)) == before[unknown] == 0
    latest = await smtp_sink.mail_to(unverified)
    assert latest["Subject"] == "您的新邮箱验证码"
    for stale in (first, token_in(mails_to(smtp_sink, unverified)[-2])):
        err = await rpc_error(identity.VerifyEmail(pb.VerifyEmailRequest(token=stale)))
        assert from_rpc_error(err).reason == "invalid_token"
    assert (await identity.VerifyEmail(pb.VerifyEmailRequest(token=token_in(latest)))).user.email_verified


async def test_mails_to_one_address_are_throttled(identity, identity_service, smtp_sink):
    free = identity_service.settings.verification_mail_free_sends
    email, _, _ = await signed_up(identity, smtp_sink)
    request = pb.ResendVerificationByEmailRequest(email=email)
    for _ in range(free + 3):
        assert (await identity.ResendVerificationByEmail(request)).email == email
    # The sign-up's mail and the free ones; the rest were not sent (and the answer did not say so).
    await eventually(lambda: len(mails_to(smtp_sink, email)) == 1 + free, what="the free mails")
    await asyncio.sleep(0.5)
    assert len(mails_to(smtp_sink, email)) == 1 + free

    # The signed-in user has a count of their own (strangers asking cannot hold it back); past it, they are told
    # to wait.
    token = (await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))).token
    me = auth(token.access_token)
    for _ in range(free):
        await identity.ResendVerification(pb.ResendVerificationRequest(), metadata=me)
    err = await rpc_error(identity.ResendVerification(pb.ResendVerificationRequest(), metadata=me))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert from_rpc_error(err).reason == "too_many_mails"
    await eventually(lambda: len(mails_to(smtp_sink, email)) == 1 + 2 * free, what="the user's own mails")


async def test_asking_by_address_checks_the_address(identity):
    err = await rpc_error(
        identity.ResendVerificationByEmail(pb.ResendVerificationByEmailRequest(email="not an address"))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
