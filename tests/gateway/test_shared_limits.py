"""Rate limits are one limit however many gateway replicas run: counters live in the gateway's PostgreSQL
database. Refused API keys are limited per source before identity is asked, and the source is the address the
trusted proxies report, never one a client writes itself."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

from crm_gateway.clientip import resolve
from crm_gateway.settings import GatewaySettings

from tests.gateway.conftest import assert_problem, gateway_database, gateway_settings, running_gateway

TOKEN = "/api/v1/auth/token"
BODY = {"email": "nobody@example.com", "password": "x"}


async def replicas(stack: AsyncExitStack, test_infra, count: int = 2, **overrides):
    """`count` gateway instances sharing one database (as replicas behind one Service)."""
    url = gateway_database(test_infra)
    return [
        await stack.enter_async_context(
            running_gateway(gateway_settings(test_infra, database_url=url, **overrides))
        )
        for _ in range(count)
    ]


async def test_a_limit_holds_across_replicas(test_infra):
    async with AsyncExitStack() as stack:
        gateways = await replicas(stack, test_infra, rate_limit_public="5/minute")
        statuses = [(await gateways[i % 2].post(TOKEN, json=BODY)).status_code for i in range(8)]
    # Identity is not running: the admitted ones are 503; with counters per replica all 8 were admitted.
    assert statuses[:5] == [503] * 5 and statuses[5:] == [429] * 3, statuses


async def test_a_tenant_limit_holds_across_replicas(test_infra, identity_service):
    from tests.gateway.conftest import sign_up

    async with AsyncExitStack() as stack:
        gateways = await replicas(
            stack, test_infra, identity_address=identity_service.address, rate_limit_per_tenant="4/minute"
        )
        company = await sign_up(gateways[0])
        answers = [
            await gateways[i % 2].get(f"/api/v1/users/{company.admin['id']}", headers=company.headers)
            for i in range(6)
        ]
    assert [a.status_code for a in answers] == [200] * 4 + [429] * 2, [a.text for a in answers]
    assert answers[3].headers["ratelimit-remaining"] == "0"
    assert_problem(answers[4], 429, "rate_limited")


async def test_refused_api_keys_are_limited_per_source_before_identity_is_asked(test_infra, identity_service):
    async with AsyncExitStack() as stack:
        gateways = await replicas(
            stack,
            test_infra,
            identity_address=identity_service.address,
            rate_limit_invalid_api_keys="3/minute",
        )
        asked = 0
        for client in gateways:
            auth = client.app.state.gateway.auth  # type: ignore[attr-defined]
            exchange = auth.exchange_api_key

            async def counted(key, exchange=exchange):
                nonlocal asked
                asked += 1
                return await exchange(key)

            auth.exchange_api_key = counted
        answers = [
            await gateways[i % 2].get("/api/v1/users", headers={"X-API-Key": f"crm_guess_{uuid.uuid4().hex}"})
            for i in range(6)
        ]
    assert [a.status_code for a in answers] == [401] * 3 + [429] * 3, [a.text for a in answers]
    assert asked == 3  # the guesses past the limit never reached identity
    assert int(answers[3].headers["retry-after"]) >= 1


def test_forwarded_for_is_read_only_from_trusted_proxies():
    nets = GatewaySettings(trusted_proxies="10.0.0.0/8, fd00::/8").trusted_proxy_networks

    def scope(peer: str, forwarded: str) -> dict:
        return {"client": (peer, 1234), "headers": [(b"x-forwarded-for", forwarded.encode())]}

    # From the ingress: the first address from the right that is not a proxy; what the client wrote is ignored.
    assert resolve(scope("10.0.0.5", "1.2.3.4, 198.51.100.9, 10.3.3.3"), nets)[0] == "198.51.100.9"
    assert resolve(scope("fd00::1", "198.51.100.10"), nets)[0] == "198.51.100.10"
    # From anyone else: the peer, whatever it claims.
    assert resolve(scope("203.0.113.7", "198.51.100.9"), nets)[0] == "203.0.113.7"
    assert resolve(scope("10.0.0.5", "not an address"), nets)[0] == "10.0.0.5"


async def test_a_client_cannot_escape_its_limit_by_writing_x_forwarded_for(test_infra):
    settings = dict(rate_limit_public="2/minute", trusted_proxies="10.0.0.0/8")
    async with AsyncExitStack() as stack:
        direct = await stack.enter_async_context(
            running_gateway(gateway_settings(test_infra, **settings), client=("203.0.113.50", 1))
        )
        spoofed = [
            (await direct.post(TOKEN, json=BODY, headers={"X-Forwarded-For": f"192.0.2.{i}"})).status_code
            for i in range(3)
        ]
        via_ingress = await stack.enter_async_context(
            running_gateway(gateway_settings(test_infra, **settings), client=("10.0.0.5", 1))
        )
        behind = [
            (
                await via_ingress.post(
                    TOKEN, json=BODY, headers={"X-Forwarded-For": f"192.0.2.{i}, 198.51.100.20"}
                )
            ).status_code
            for i in range(3)
        ]
    assert spoofed == [503, 503, 429] and behind == [503, 503, 429]


def test_production_refuses_trusting_every_address():
    problems = GatewaySettings(environment="test", trusted_proxies="*").production_problems()
    assert any("CRM_TRUSTED_PROXIES" in p for p in problems)


async def test_large_limits_count_in_memory_between_flushes_and_still_hold(test_infra, identity_service):
    """Far from a limit of 100 or more, hits are counted in memory and flushed together (no round trip per
    request); near it, every hit is counted in the database, so across replicas the limit holds within the
    headroom that other replicas' unflushed hits may take."""
    from tests.gateway.conftest import sign_up

    async with AsyncExitStack() as stack:
        gateways = await replicas(
            stack, test_infra, identity_address=identity_service.address, rate_limit_per_tenant="100/minute"
        )
        company = await sign_up(gateways[0])
        waited = 0  # requests that waited for a statement of their own
        for client in gateways:
            limits = client.app.state.gateway.limits  # type: ignore[attr-defined]

            async def counted(checks, counts=limits._counts):
                nonlocal waited
                waited += 1
                return await counts(checks)

            limits._counts = counted
        answers = [
            await gateways[i % 2].get(f"/api/v1/users/{company.admin['id']}", headers=company.headers)
            for i in range(140)
        ]
        for client in gateways:
            await client.app.state.gateway.limits.flush()  # type: ignore[attr-defined]
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(admitted) + len(refused) == 140, {a.status_code for a in answers}
    assert 100 <= len(admitted) <= 100 + 20, len(admitted)
    assert all(a.status_code == 429 for a in answers[len(admitted) + 20 :])
    # Far from the limit, requests wait for no statement: only each replica's first (to learn the window), the
    # last 20% of the limit and the refused ones do.
    assert waited <= 2 + 20 + (140 - len(admitted)) + 5, waited
    remaining = [int(a.headers["ratelimit-remaining"]) for a in admitted]
    assert remaining[-1] <= 5 and remaining[0] >= 90
