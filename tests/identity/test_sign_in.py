import asyncio
import time

import grpc
import pyotp
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.errors import from_rpc_error

from tests.identity.helpers import PASSWORD, auth, rpc_error, sign_up, unique_email
from tests.identity.test_throttling_and_verification import token_in


async def test_sign_up_creates_a_company_whose_admin_can_sign_in_and_see_everything(identity):
    company = await sign_up(identity)
    me = await identity.GetMe(pb.GetMeRequest(), metadata=company.md)
    assert me.tenant.id == company.tenant.id
    assert me.tenant.name == "华为技术有限公司"
    # The company's creation time is in the sign-up answer and in every read of it, and they agree.
    assert company.tenant.HasField("created_at") and me.tenant.created_at == company.tenant.created_at
    assert company.tenant.created_at.ToDatetime() <= company.admin.created_at.ToDatetime()
    assert me.user.email == company.admin.email
    assert me.user.status == pb.USER_STATUS_ACTIVE
    assert [(p.object, list(p.actions), p.data_scope) for p in me.permissions] == [
        ("*", ["*"], pb.DATA_SCOPE_ALL)
    ]
    assert company.token.token_type == "Bearer" and company.token.expires_in > 0


async def test_sign_up_names_every_bad_field_at_once(identity):
    err = await rpc_error(
        identity.SignUp(pb.SignUpRequest(tenant_name="", email="not-an-email", password="short", name=""))
    )
    details = from_rpc_error(err)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f.field for f in details.field_errors} == {"tenant_name", "email", "password", "name"}


async def test_an_email_signs_up_only_once(identity, smtp_sink):
    company = await sign_up(identity)
    again = pb.SignUpRequest(
        tenant_name="Other", email=company.admin.email.upper(), password=PASSWORD, name="x"
    )
    # The same address in other letters: while the first sign-up is unproven, a second one only waits beside it
    # (tests/identity/test_pending_sign_ups.py) ...
    assert (await identity.SignUp(again)).user.status == pb.USER_STATUS_PENDING
    # ... and once it is proven, it is refused.
    first_mail = next(m for m in smtp_sink.messages if company.admin.email in str(m["To"]))
    await identity.VerifyEmail(pb.VerifyEmailRequest(token=token_in(first_mail)))
    err = await rpc_error(identity.SignUp(again))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_unknown_email_and_wrong_password_look_the_same(identity):
    company = await sign_up(identity)
    unknown = await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=unique_email(), password=PASSWORD))
    )
    wrong = await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=company.admin.email, password="nope nope nope"))
    )
    assert (unknown.code(), unknown.details()) == (wrong.code(), wrong.details())


async def test_two_factor_sign_in_needs_a_fresh_code_once_enabled(identity):
    company = await sign_up(identity)
    email = company.admin.email
    started = await identity.StartTotpEnrollment(pb.StartTotpEnrollmentRequest(), metadata=company.md)
    assert started.provisioning_uri.startswith("otpauth://totp/")
    totp = pyotp.TOTP(started.secret)
    bad = await rpc_error(
        identity.ConfirmTotpEnrollment(pb.ConfirmTotpEnrollmentRequest(code="000000"), metadata=company.md)
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A code is good once: confirming uses the current step, so sign-in needs the next one.
    confirmed = await identity.ConfirmTotpEnrollment(
        pb.ConfirmTotpEnrollmentRequest(code=totp.at(time.time() - 30)), metadata=company.md
    )
    assert confirmed.user.totp_enabled

    missing = await rpc_error(identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD)))
    assert from_rpc_error(missing).reason == "totp_required"
    code = totp.now()
    ok = await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD, totp_code=code))
    assert ok.token.access_token
    # The same code again (not `totp.now()`, which is a fresh code once a 30 s step has ended in between).
    replay = await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD, totp_code=code))
    )
    assert from_rpc_error(replay).reason == "bad_totp"


async def test_refresh_rotates_and_a_reused_refresh_token_ends_the_whole_session(identity):
    company = await sign_up(identity)
    first = company.token.refresh_token
    second = (await identity.RefreshToken(pb.RefreshTokenRequest(refresh_token=first))).token
    assert second.refresh_token != first and second.access_token
    third = (await identity.RefreshToken(pb.RefreshTokenRequest(refresh_token=second.refresh_token))).token

    stolen = await rpc_error(identity.RefreshToken(pb.RefreshTokenRequest(refresh_token=first)))
    assert from_rpc_error(stolen).reason == "invalid_refresh_token"
    # The reuse revoked the family: the newest token is dead too.
    after = await rpc_error(identity.RefreshToken(pb.RefreshTokenRequest(refresh_token=third.refresh_token)))
    assert after.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_logout_revokes_the_refresh_token(identity):
    company = await sign_up(identity)
    await identity.RevokeToken(pb.RevokeTokenRequest(refresh_token=company.token.refresh_token))
    err = await rpc_error(
        identity.RefreshToken(pb.RefreshTokenRequest(refresh_token=company.token.refresh_token))
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_calls_without_a_valid_token_are_unauthenticated(identity):
    company = await sign_up(identity)
    tampered = company.token.access_token[:-4] + (
        "AAAA" if not company.token.access_token.endswith("AAAA") else "BBBB"
    )
    for md in [(), auth("garbage"), auth(tampered)]:
        err = await rpc_error(identity.GetMe(pb.GetMeRequest(), metadata=md))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_jwks_publishes_the_key_that_signs_tokens(identity):
    import jwt

    company = await sign_up(identity)
    jwks = (await identity.GetJwks(pb.GetJwksRequest())).jwks
    kids = {k["kid"] for k in jwks["keys"]}
    header = jwt.get_unverified_header(company.token.access_token)
    assert header["alg"] == "EdDSA" and header["kid"] in kids


async def test_concurrent_sign_ins_all_succeed(identity):
    company = await sign_up(identity)
    results = await asyncio.gather(
        *(
            identity.CreateToken(pb.CreateTokenRequest(email=company.admin.email, password=PASSWORD))
            for _ in range(6)
        )
    )
    assert len({r.token.refresh_token for r in results}) == 6


async def test_text_the_database_cannot_store_is_bad_input_not_a_crash(identity):
    err = await rpc_error(
        identity.SignUp(
            pb.SignUpRequest(tenant_name="bad\x00name", email=unique_email(), password=PASSWORD, name="x")
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(err).reason == "invalid_value"
