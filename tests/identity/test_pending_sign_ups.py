"""The real owner of an address is not kept out for a week by someone else's unverified sign-up: a second sign-up
with it waits (pending) and, once it proves the mailbox, takes the address from the unproven one."""

from __future__ import annotations

import grpc
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.errors import from_rpc_error
from crm_kit.testing import recorded_events

from tests.identity.helpers import PASSWORD, auth, rpc_error, unique_email
from tests.identity.test_throttling_and_verification import token_in

SQUATTER_PASSWORD = "squatter password"


async def squatted(identity, smtp_sink) -> tuple[str, pb.SignUpResponse, str]:
    email = unique_email("owner")
    first = await identity.SignUp(
        pb.SignUpRequest(tenant_name="Squat", email=email, password=SQUATTER_PASSWORD, name="x", locale="en")
    )
    return email, first, token_in(await smtp_sink.mail_to(email))


async def test_the_owner_signs_up_again_and_takes_the_address_by_verifying_it(
    identity, identity_service, smtp_sink
):
    email, first, squatter_token = await squatted(identity, smtp_sink)
    second = await identity.SignUp(
        pb.SignUpRequest(tenant_name="Owner Co", email=email, password=PASSWORD, name="Owner", locale="en")
    )
    assert second.user.status == pb.USER_STATUS_PENDING and second.tenant.id != first.tenant.id
    # Pending: no sign-in yet (the one answer), and the first sign-up still holds the address meanwhile.
    err = await rpc_error(identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD)))
    assert from_rpc_error(err).reason == "bad_credentials"
    assert await identity.CreateToken(pb.CreateTokenRequest(email=email, password=SQUATTER_PASSWORD))

    owner_token = token_in(await smtp_sink.mail_to(email))
    verified = await identity.VerifyEmail(pb.VerifyEmailRequest(token=owner_token))
    assert verified.user.id == second.user.id
    assert verified.user.status == pb.USER_STATUS_ACTIVE and verified.user.email_verified

    signed_in = await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))
    me = await identity.GetMe(pb.GetMeRequest(), metadata=auth(signed_in.token.access_token))
    assert me.tenant.id == second.tenant.id
    err = await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=email, password=SQUATTER_PASSWORD))
    )
    assert from_rpc_error(err).reason == "bad_credentials"
    err = await rpc_error(identity.VerifyEmail(pb.VerifyEmailRequest(token=squatter_token)))
    assert from_rpc_error(err).reason == "invalid_token"
    released = await recorded_events(identity_service.runtime.db, first.user.id)
    assert "crm.identity.v1.EmailReleased" in [e.type for e in released]


async def test_a_pending_sign_up_cannot_take_an_address_proven_meanwhile(identity, smtp_sink):
    email, _, first_token = await squatted(identity, smtp_sink)
    await identity.SignUp(pb.SignUpRequest(tenant_name="Late", email=email, password=PASSWORD, name="y"))
    pending_token = token_in(await smtp_sink.mail_to(email))
    # The first sign-up was the owner after all, and verifies first: the address is theirs for good.
    await identity.VerifyEmail(pb.VerifyEmailRequest(token=first_token))
    err = await rpc_error(identity.VerifyEmail(pb.VerifyEmailRequest(token=pending_token)))
    assert from_rpc_error(err).reason == "email_taken"
    assert await identity.CreateToken(pb.CreateTokenRequest(email=email, password=SQUATTER_PASSWORD))
    # And nobody signs up with it any more.
    err = await rpc_error(
        identity.SignUp(pb.SignUpRequest(tenant_name="z", email=email, password=PASSWORD, name="z"))
    )
    assert from_rpc_error(err).reason == "email_taken"


async def test_pending_sign_ups_cannot_bury_an_inbox(identity, identity_service, smtp_sink):
    free = identity_service.settings.verification_mail_free_sends
    email, _, _ = await squatted(identity, smtp_sink)
    for _ in range(free):
        await identity.SignUp(pb.SignUpRequest(tenant_name="Spam", email=email, password=PASSWORD, name="s"))
    err = await rpc_error(
        identity.SignUp(pb.SignUpRequest(tenant_name="Spam", email=email, password=PASSWORD, name="s"))
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert from_rpc_error(err).reason == "too_many_mails"
