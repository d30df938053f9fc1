"""A burst of sign-in attempts made at the same instant gets no more guesses than attempts made one by one: each
attempt is counted before its secret is looked at (crm_identity.domain.throttles.claim).

What was checked is read from the audit trail's source, the outbox: every attempt records one LoginFailed whose
reason says whether its secret was checked ("bad_password", "bad_totp") or it was refused unseen ("throttled")."""

from __future__ import annotations

import asyncio
import time

import grpc
import pyotp
import pytest
from crm.identity.v1 import events_pb2
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.testing import recorded_events

from tests.identity.helpers import PASSWORD, sign_up
from tests.identity.test_throttling_and_verification import from_ip, new_ip

BURST = 30


async def failure_reasons(identity_service, user_id: str) -> list[str]:
    reasons = []
    for envelope in await recorded_events(identity_service.runtime.db, user_id):
        if envelope.type == "crm.identity.v1.LoginFailed":
            failed = events_pb2.LoginFailed()
            envelope.payload.Unpack(failed)
            reasons.append(failed.reason)
    return reasons


async def wrong_password(identity, company) -> pb.CreateTokenRequest:
    return pb.CreateTokenRequest(email=company.admin.email, password="not the password")


async def wrong_totp_code(identity, company) -> pb.CreateTokenRequest:
    started = await identity.StartTotpEnrollment(pb.StartTotpEnrollmentRequest(), metadata=company.md)
    totp = pyotp.TOTP(started.secret)
    await identity.ConfirmTotpEnrollment(
        pb.ConfirmTotpEnrollmentRequest(code=totp.at(time.time() - 30)), metadata=company.md
    )
    good = {totp.at(time.time() + d) for d in (-60, -30, 0, 30, 60)}
    wrong = next(c for c in (f"{n:06d}" for n in range(10)) if c not in good)
    return pb.CreateTokenRequest(email=company.admin.email, password=PASSWORD, totp_code=wrong)


# Every secret a sign-in checks, with the reason its failure is recorded under.
GUESSES = [(wrong_password, "bad_password"), (wrong_totp_code, "bad_totp")]


@pytest.mark.parametrize(("guess", "checked_reason"), GUESSES, ids=[r for _, r in GUESSES])
async def test_a_burst_of_guesses_gets_no_more_checks_than_the_free_attempts(
    identity, identity_service, guess, checked_reason
):
    free = identity_service.settings.login_free_attempts
    company = await sign_up(identity)
    request = await guess(identity, company)
    before = len(await failure_reasons(identity_service, company.admin.id))
    ip = new_ip()

    async def attempt():
        try:
            await identity.CreateToken(request, metadata=from_ip(ip))
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(attempt() for _ in range(BURST)))
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    reasons = (await failure_reasons(identity_service, company.admin.id))[before:]
    assert len(reasons) == BURST
    # No slack: the free attempts and not one more had their secret checked; the rest were refused unseen.
    assert reasons.count(checked_reason) == free
    assert reasons.count("throttled") == BURST - free


async def test_the_owners_own_concurrent_sign_ins_still_go_through(identity, identity_service):
    """Attempts in flight count until they end: the ones past the free attempts wait for them, and go through
    once one of them has succeeded (a success clears the account's count)."""
    company = await sign_up(identity)
    ip = new_ip()
    request = pb.CreateTokenRequest(email=company.admin.email, password=PASSWORD)
    count = identity_service.settings.login_free_attempts * 2
    results = await asyncio.gather(
        *(identity.CreateToken(request, metadata=from_ip(ip)) for _ in range(count))
    )
    assert len({r.token.refresh_token for r in results}) == count
