"""Credentials at the edge and rate limits, without a running identity service."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from crm.identity.v1 import identity_pb2
from crm_gateway.auth import Authenticator
from crm_gateway.problems import ProblemError
from crm_gateway.ratelimit import RateLimits
from crm_kit.auth import JwtVerifier, SigningKeys, TokenIssuer, local_jwks_source
from crm_kit.context import Principal
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEYS = SigningKeys([Ed25519PrivateKey.generate()])
ISSUER = TokenIssuer(KEYS, issuer="crm-identity", audience="crm")


class FakeIdentity:
    """AuthenticateApiKey as identity answers it: a token for a known key, UNAUTHENTICATED otherwise."""

    def __init__(self, delay: float = 0.0):
        self.calls = 0
        self.delay = delay
        self.valid = {"crm_good": Principal(tenant_id="t1", actor_id="k1", actor_type=2)}

    async def __call__(self, key: str) -> identity_pb2.AuthenticateApiKeyResponse:
        self.calls += 1
        await asyncio.sleep(self.delay)
        principal = self.valid.get(key)
        if principal is None:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(), grpc.aio.Metadata(), "unknown API key"
            )
        token = ISSUER.issue(principal)
        return identity_pb2.AuthenticateApiKeyResponse(
            api_key_id="k1", tenant_id="t1", access_token=token.token, expires_in=300, rate_limit_per_minute=7
        )


def authenticator(identity: FakeIdentity, ttl: float = 30.0) -> Authenticator:
    verifier = JwtVerifier(local_jwks_source(KEYS), issuer="crm-identity", audience="crm")
    return Authenticator(verifier, identity, api_key_ttl=ttl)


async def test_a_bearer_token_is_verified_locally():
    token = ISSUER.issue(Principal(tenant_id="t1", actor_id="u1")).token
    caller = await authenticator(FakeIdentity()).authenticate(f"Bearer {token}", None)
    assert caller.principal.tenant_id == "t1" and caller.token == token and not caller.api_key_id


async def test_an_api_key_is_exchanged_once_then_cached_briefly():
    identity = FakeIdentity()
    auth = authenticator(identity, ttl=0.2)
    first = await auth.authenticate(None, "crm_good")
    assert first.principal.tenant_id == "t1" and first.api_key_id == "k1"
    assert first.api_key_rate_limit_per_minute == 7
    await auth.authenticate(None, "crm_good")
    assert identity.calls == 1
    await asyncio.sleep(0.25)  # past the cache: a revoked key would now be refused
    await auth.authenticate(None, "crm_good")
    assert identity.calls == 2


async def test_concurrent_requests_with_one_key_ask_identity_once():
    identity = FakeIdentity(delay=0.1)
    auth = authenticator(identity)
    callers = await asyncio.gather(*(auth.authenticate(None, "crm_good") for _ in range(10)))
    assert identity.calls == 1 and {c.principal.actor_id for c in callers} == {"k1"}


async def test_a_bad_key_is_401_and_remembered_for_a_moment():
    identity = FakeIdentity()
    auth = authenticator(identity)
    for _ in range(3):
        with pytest.raises(ProblemError) as info:
            await auth.authenticate(None, "crm_bad")
        assert info.value.status == 401 and info.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert identity.calls == 1


async def test_rate_limits_per_key_and_per_tenant(test_infra):
    from crm_gateway.store import GatewayDatabase
    from crm_kit import infra

    from tests.gateway.conftest import gateway_database

    url = gateway_database(test_infra)
    await infra.create_database(test_infra.postgres_admin_dsn, url.rsplit("/", 1)[1], extensions=())
    database = GatewayDatabase(url, migrate=True)
    await database.start()
    try:
        await _limits(RateLimits(database, per_tenant="3/minute", public="", api_key_default_per_minute=100))
    finally:
        await database.stop()


async def test_rate_limits_count_in_memory_while_the_database_is_down():
    await _limits(RateLimits(None, per_tenant="3/minute", public="", api_key_default_per_minute=100))


async def _limits(limits: RateLimits) -> None:
    headers = await limits.check("t1", "k1", 2)
    assert headers == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": headers["RateLimit-Reset"],
    }
    await limits.check("t1", "k1", 2)
    with pytest.raises(ProblemError) as info:
        await limits.check("t1", "k1", 2)
    assert info.value.status == 429 and "API key" in info.value.detail
    assert 1 <= int(info.value.headers["Retry-After"]) <= 60
    # The tenant's own budget (3) was charged twice by the key; one request is left for its users.
    assert (await limits.check("t1"))["RateLimit-Remaining"] == "0"
    with pytest.raises(ProblemError) as info:
        await limits.check("t1")
    assert "tenant" in info.value.detail
    assert (await limits.check("t2"))["RateLimit-Remaining"] == "2"
    assert await limits.check_public("203.0.113.1") == {}
