import asyncpg
import grpc
from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.auth import JwtVerifier
from crm_kit.errors import from_rpc_error
from crm_kit.testing import recorded_events

from tests.identity.helpers import rpc_error, sign_up


async def test_an_api_key_is_shown_once_stored_hashed_and_stands_for_its_roles(
    identity, identity_service, test_infra
):
    company = await sign_up(identity)
    admin_role = next(
        r for r in (await identity.ListRoles(pb.ListRolesRequest(), metadata=company.md)).items if r.built_in
    )
    created = await identity.CreateApiKey(
        pb.CreateApiKeyRequest(name="ERP sync", role_ids=[admin_role.id], rate_limit_per_minute=120),
        metadata=company.md,
    )
    secret = created.api_key.secret
    assert secret.startswith(created.api_key.prefix + "_")
    # The secret is in the create answer only: not in reads, lists or the event others receive.
    listed = await identity.ListApiKeys(pb.ListApiKeysRequest(), metadata=company.md)
    assert [k.id for k in listed.items] == [created.api_key.id]
    assert secret not in str(listed)
    got = await identity.GetApiKey(pb.GetApiKeyRequest(id=created.api_key.id), metadata=company.md)
    assert got.api_key.prefix == created.api_key.prefix and not got.api_key.secret
    [event] = await recorded_events(identity_service.runtime.db, created.api_key.id)
    payload = events_pb2.ApiKeyCreated()
    assert event.payload.Unpack(payload) and payload.api_key.id == created.api_key.id
    assert not payload.api_key.secret and secret not in event.SerializeToString().decode("latin-1")

    conn = await asyncpg.connect(test_infra.asyncpg_dsn(identity_service.settings.database_url))
    try:
        stored = await conn.fetchval("SELECT secret_hash FROM api_keys WHERE id = $1", created.api_key.id)
    finally:
        await conn.close()
    assert stored and secret not in stored

    authed = await identity.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(api_key=secret))
    assert authed.tenant_id == company.tenant.id and authed.rate_limit_per_minute == 120
    jwks = (await identity.GetJwks(pb.GetJwksRequest())).jwks

    async def source():
        from google.protobuf import json_format

        return json_format.MessageToDict(jwks)

    principal = await JwtVerifier(source, issuer="crm-identity", audience="crm").verify(authed.access_token)
    assert principal.actor_type == event_pb2.ACTOR_TYPE_API_KEY and principal.role_ids == (admin_role.id,)
    as_key = (("authorization", f"Bearer {authed.access_token}"),)
    users = await identity.ListUsers(pb.ListUsersRequest(), metadata=as_key)
    assert [u.id for u in users.items] == [company.admin.id]


async def test_a_revoked_key_no_longer_authenticates(identity):
    company = await sign_up(identity)
    created = await identity.CreateApiKey(pb.CreateApiKeyRequest(name="old"), metadata=company.md)
    await identity.RevokeApiKey(pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=company.md)
    err = await rpc_error(
        identity.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(api_key=created.api_key.secret))
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and from_rpc_error(err).reason == "invalid_api_key"
    key = (await identity.GetApiKey(pb.GetApiKeyRequest(id=created.api_key.id), metadata=company.md)).api_key
    assert key.HasField("revoked_at")
