"""Sign-in throttling that an outsider cannot turn against the owner, one answer for every failed sign-in,
and proven email addresses."""

import re
import secrets

import asyncpg
import grpc
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.context import CLIENT_IP_METADATA
from crm_kit.errors import from_rpc_error
from crm_kit.testing import eventually

from tests.identity.helpers import PASSWORD, auth, rpc_error, sign_up, unique_email


def new_ip() -> str:
    """Each test its own client addresses: an address's failures count over all accounts."""
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def from_ip(ip: str) -> tuple[tuple[str, str], ...]:
    return ((CLIENT_IP_METADATA, ip),)


async def sign_in(identity, email: str, password: str, ip: str):
    return await identity.CreateToken(
        pb.CreateTokenRequest(email=email, password=password), metadata=from_ip(ip)
    )


async def failure(identity, email: str, password: str, ip: str):
    err = await rpc_error(sign_in(identity, email, password, ip))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    problem = from_rpc_error(err)
    return (
        err.code(),
        err.details(),
        problem.reason,
        problem.extensions,
        [f.field for f in problem.field_errors],
    )


async def test_an_outsider_cannot_lock_the_owner_out(identity):
    attacker, owner = new_ip(), new_ip()
    company = await sign_up(identity)
    email = company.admin.email
    for _ in range(12):
        await failure(identity, email, "guess guess guess", attacker)
    # The owner, from their own address, signs in at once.
    assert (await sign_in(identity, email, PASSWORD, owner)).token.access_token


async def test_unknown_wrong_and_throttled_get_the_same_answer(identity):
    attacker = new_ip()
    company = await sign_up(identity)
    known, unknown = company.admin.email, unique_email("nobody")
    wrong = await failure(identity, known, "wrong password!", attacker)
    assert wrong[2] == "bad_credentials"
    assert await failure(identity, unknown, "wrong password!", attacker) == wrong
    for _ in range(5):
        await failure(identity, known, "wrong password!", attacker)
        await failure(identity, unknown, "wrong password!", attacker)
    # Throttled now, both: even the right password gets the same answer as an address that has no account.
    assert await failure(identity, known, PASSWORD, attacker) == wrong
    assert await failure(identity, unknown, PASSWORD, attacker) == wrong


async def test_failures_slow_an_address_down_progressively_instead_of_locking(identity):
    attacker = new_ip()
    company = await sign_up(identity)
    email = company.admin.email
    for _ in range(5):
        await failure(identity, email, "wrong password!", attacker)
    # The sixth attempt from that address waits its turn (3 s in these tests, doubling with each failure) ...
    assert (await failure(identity, email, PASSWORD, attacker))[2] == "bad_credentials"

    async def signs_in():
        try:
            return await sign_in(identity, email, PASSWORD, attacker)
        except grpc.aio.AioRpcError:
            return None

    # ... and then goes through: a delay, not a lock.
    assert await eventually(signs_in, within=30, interval=0.5)
    # A success starts the account's count again.
    await failure(identity, email, "wrong password!", attacker)
    assert await sign_in(identity, email, PASSWORD, attacker)


async def test_one_address_failing_on_many_accounts_is_slowed_on_all_of_them(identity):
    attacker, owner = new_ip(), new_ip()
    company = await sign_up(identity)
    sprayer = attacker
    for _ in range(20):
        await failure(identity, unique_email("spray"), "Summer2026!", sprayer)
    assert (await failure(identity, company.admin.email, PASSWORD, sprayer))[2] == "bad_credentials"
    assert await sign_in(identity, company.admin.email, PASSWORD, owner)


# ---------------------------------------------------------------- email verification


def token_in(mail) -> str:
    match = re.search(r"^([A-Za-z0-9_-]{40,})\s*$", mail.get_content(), re.MULTILINE)
    assert match, mail.get_content()
    return match.group(1)


async def test_sign_up_mails_a_single_use_token_in_the_users_language(identity, smtp_sink):
    email = unique_email("new")
    created = await identity.SignUp(
        pb.SignUpRequest(tenant_name="Acme", email=email, password=PASSWORD, name="Ann", locale="en")
    )
    assert not created.user.email_verified
    # Signing in right after signing up still works (the address is proven within 7 days).
    assert (await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))).token
    mail = await smtp_sink.mail_to(email)
    assert mail["Subject"] == "Verify your email address"
    token = token_in(mail)
    verified = await identity.VerifyEmail(pb.VerifyEmailRequest(token=token))
    assert verified.user.email_verified and verified.user.email == email
    again = await rpc_error(identity.VerifyEmail(pb.VerifyEmailRequest(token=token)))
    assert from_rpc_error(again).reason == "invalid_token"

    zh = unique_email("zh")
    await identity.SignUp(pb.SignUpRequest(tenant_name="华为", email=zh, password=PASSWORD, name="王"))
    assert (await smtp_sink.mail_to(zh))["Subject"] == "请验证您的邮箱地址"


async def test_an_unverified_sign_up_does_not_keep_the_owner_from_being_invited(identity, smtp_sink):
    company = await sign_up(identity)
    victim = unique_email("victim")
    await identity.SignUp(
        pb.SignUpRequest(tenant_name="Squat", email=victim, password="squatter pass", name="x")
    )

    invited = await identity.CreateUser(pb.CreateUserRequest(email=victim, name="李雷"), metadata=company.md)
    joined = await identity.AcceptInvitation(
        pb.AcceptInvitationRequest(invitation_token=invited.user.invitation_token, password=PASSWORD)
    )
    assert joined.user.email_verified and joined.user.status == pb.USER_STATUS_ACTIVE
    token = (await identity.CreateToken(pb.CreateTokenRequest(email=victim, password=PASSWORD))).token
    me = await identity.GetMe(pb.GetMeRequest(), metadata=auth(token.access_token))
    assert me.tenant.id == company.tenant.id
    squatter = await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=victim, password="squatter pass"))
    )
    assert from_rpc_error(squatter).reason == "bad_credentials"
    # The squatter's verification mail no longer proves anything.
    stale = await rpc_error(
        identity.VerifyEmail(pb.VerifyEmailRequest(token=token_in(await smtp_sink.mail_to(victim))))
    )
    assert from_rpc_error(stale).reason == "invalid_token"

    # A proven address, though, is not taken from its holder: not by an invitation, not by a sign-up.
    other = await sign_up(identity, "腾讯")
    taken = await rpc_error(
        identity.CreateUser(pb.CreateUserRequest(email=victim, name="x"), metadata=other.md)
    )
    assert from_rpc_error(taken).reason == "email_taken"
    taken = await rpc_error(
        identity.SignUp(pb.SignUpRequest(tenant_name="y", email=victim, password=PASSWORD, name="y"))
    )
    assert from_rpc_error(taken).reason == "email_taken"


async def test_an_unverified_sign_up_stops_signing_in_after_seven_days_and_frees_the_address(
    identity, identity_service, test_infra
):
    email = unique_email("late")
    await identity.SignUp(pb.SignUpRequest(tenant_name="Late", email=email, password=PASSWORD, name="x"))
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(identity_service.settings.database_url))
    try:
        await conn.execute(
            "UPDATE users SET created_at = created_at - interval '8 days',"
            " email_verification_expires_at = now() - interval '1 day' WHERE email = $1",
            email,
        )
    finally:
        await conn.close()
    err = await rpc_error(identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD)))
    assert from_rpc_error(err).reason == "email_not_verified"
    # The real owner signs up anew and gets the address.
    again = await identity.SignUp(
        pb.SignUpRequest(tenant_name="Owner", email=email, password="owner password", name="y")
    )
    assert again.user.email == email
    assert await identity.CreateToken(pb.CreateTokenRequest(email=email, password="owner password"))


async def test_counts_older_than_a_day_are_forgotten_and_cleared(identity, identity_service, test_infra):
    company = await sign_up(identity)
    attacker = new_ip()
    for _ in range(6):
        await failure(identity, company.admin.email, "wrong password!", attacker)
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(identity_service.settings.database_url))
    try:
        assert (await failure(identity, company.admin.email, PASSWORD, attacker))[2] == "bad_credentials"
        await conn.execute(
            "UPDATE login_throttles SET last_failure_at = last_failure_at - interval '25 hours'"
        )
        # Yesterday's failures no longer slow anyone down ...
        assert await sign_in(identity, company.admin.email, PASSWORD, attacker)
        # ... and the next failure anywhere clears them from the table.
        await failure(identity, unique_email("any"), "wrong password!", new_ip())
        left = await conn.fetchval(
            "SELECT count(*) FROM login_throttles WHERE last_failure_at < now() - interval '1 day'"
        )
    finally:
        await conn.close()
    assert left == 0
