"""What a user leaves behind when deactivated, what a stolen session cannot change, and how fast a retired
signing key stops verifying."""

import time

import grpc
import pyotp
from crm.identity.v1 import identity_pb2 as pb
from crm.identity.v1 import identity_pb2_grpc
from crm_kit.auth import JwtVerifier, generate_pem
from crm_kit.errors import Unauthenticated, from_rpc_error
from crm_kit.testing import eventually, recorded_events, running_service
from google.protobuf import json_format

from tests.identity.helpers import PASSWORD, auth, invite_and_join, rpc_error, sign_up, unique_email


async def test_deactivating_a_user_revokes_the_api_keys_they_made_and_those_keys_made(
    identity, identity_service
):
    company = await sign_up(identity)
    integrator = (
        await identity.CreateRole(
            pb.CreateRoleRequest(
                name="集成",
                permissions=[pb.Permission(object="api_key", actions=["create", "read"])],
            ),
            metadata=company.md,
        )
    ).role
    user, token = await invite_and_join(identity, company, role_ids=[integrator.id])
    made = await identity.CreateApiKey(
        pb.CreateApiKeyRequest(name="ERP", role_ids=[integrator.id]), metadata=auth(token.access_token)
    )
    as_key = await identity.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(api_key=made.api_key.secret))
    grandchild = await identity.CreateApiKey(
        pb.CreateApiKeyRequest(name="ERP 2", role_ids=[integrator.id]), metadata=auth(as_key.access_token)
    )
    admins_key = await identity.CreateApiKey(pb.CreateApiKeyRequest(name="admin's"), metadata=company.md)

    await identity.DeactivateUser(pb.DeactivateUserRequest(id=user.id), metadata=company.md)

    for key in (made, grandchild):
        err = await rpc_error(
            identity.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(api_key=key.api_key.secret))
        )
        assert from_rpc_error(err).reason == "invalid_api_key"
        events = await recorded_events(identity_service.runtime.db, key.api_key.id)
        assert [e.type for e in events][-1] == "crm.identity.v1.ApiKeyRevoked"
    # Other people's keys are untouched.
    assert await identity.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(api_key=admins_key.api_key.secret))


async def test_an_active_totp_secret_is_replaced_only_with_the_current_code(identity):
    email = unique_email("totp")
    await identity.SignUp(pb.SignUpRequest(tenant_name="t", email=email, password=PASSWORD, name="n"))
    token = (await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))).token
    md = auth(token.access_token)
    started = await identity.StartTotpEnrollment(pb.StartTotpEnrollmentRequest(), metadata=md)
    totp = pyotp.TOTP(started.secret)
    await identity.ConfirmTotpEnrollment(
        pb.ConfirmTotpEnrollmentRequest(code=totp.at(time.time() - 30)), metadata=md
    )

    # Someone holding only the session (no authenticator) cannot put their own secret in ...
    err = await rpc_error(identity.StartTotpEnrollment(pb.StartTotpEnrollmentRequest(), metadata=md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert from_rpc_error(err).reason == "totp_enabled"
    for code in ("", "000000"):
        err = await rpc_error(identity.DisableTotp(pb.DisableTotpRequest(code=code), metadata=md))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    sign_in = await identity.CreateToken(
        pb.CreateTokenRequest(email=email, password=PASSWORD, totp_code=totp.now())
    )
    assert sign_in.token.access_token  # the original secret still works

    # ... the owner, with a current code, can.
    await identity.DisableTotp(pb.DisableTotpRequest(code=totp.at(time.time() + 30)), metadata=md)
    again = await identity.StartTotpEnrollment(pb.StartTotpEnrollmentRequest(), metadata=md)
    assert again.secret and again.secret != started.secret


async def _verifies(verifier, token) -> bool:
    try:
        return bool((await verifier.verify(token.access_token)).tenant_id)
    except Unauthenticated:
        return False


async def _refused(verifier, token) -> bool:
    return not await _verifies(verifier, token)


def _identity_settings(test_infra, tmp_path, database_url, keys: list[bytes]):
    from crm_identity.settings import IdentitySettings

    return IdentitySettings(
        environment="test",
        database_url=database_url,
        nats_url=test_infra.nats_url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        migrate_on_start=True,
        data_dir=tmp_path,
        jwt_private_keys=b"".join(keys).decode(),
    )


async def test_a_retired_signing_key_stops_verifying_within_the_refresh_time(test_infra, tmp_path):
    """Rotate identity's keys as an operator would: old → new and old → new only. A verifier that already
    trusts (and has cached) a token of the old key rejects it within its refresh time."""
    from crm_identity.app import SPEC

    refresh_seconds = 1.0
    database_url = await test_infra.database("identity_rotation")
    old, new = generate_pem(), generate_pem()
    current: dict[str, identity_pb2_grpc.IdentityServiceStub] = {}

    async def jwks():
        return json_format.MessageToDict((await current["stub"].GetJwks(pb.GetJwksRequest())).jwks)

    verifier = JwtVerifier(jwks, issuer="crm-identity", audience="crm", refresh_seconds=refresh_seconds)

    async def serve(keys):
        service = running_service(SPEC, _identity_settings(test_infra, tmp_path, database_url, keys))
        return service, await service.__aenter__()

    ctx, service = await serve([old])
    async with grpc.aio.insecure_channel(service.address) as channel:
        current["stub"] = identity = identity_pb2_grpc.IdentityServiceStub(channel)
        email = unique_email()
        await identity.SignUp(pb.SignUpRequest(tenant_name="t", email=email, password=PASSWORD, name="n"))
        old_token = (await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))).token
        assert (await verifier.verify(old_token.access_token)).tenant_id
    await ctx.__aexit__(None, None, None)

    for keys in ([new, old], [new]):
        ctx, service = await serve(keys)
        try:
            async with grpc.aio.insecure_channel(service.address) as channel:
                current["stub"] = identity = identity_pb2_grpc.IdentityServiceStub(channel)
                fresh = (
                    await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))
                ).token
                # The new key is learnt within the refresh time too.
                assert await eventually(lambda t=fresh: _verifies(verifier, t), within=refresh_seconds * 10)
                if keys == [new, old]:
                    assert (await verifier.verify(old_token.access_token)).tenant_id
                    continue

                # Bounded by the refresh time (with room for a loaded machine), not by a restart.
                await eventually(
                    lambda: _refused(verifier, old_token),
                    within=refresh_seconds * 10,
                    what="the retired key to be refused",
                )
                assert (await verifier.verify(fresh.access_token)).tenant_id
        finally:
            await ctx.__aexit__(None, None, None)
