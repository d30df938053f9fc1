"""An idempotent replay is only ever given to the same caller with the same request.

Public routes have no credential to scope an Idempotency-Key by; their scope is the request body, and the
service's own copy of the key is matched on the request and lives exactly as long as the gateway's."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.gateway.conftest import PASSWORD, gateway_settings, running_gateway, sign_up, unique_email

TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"


async def test_sign_in_answers_are_never_replayed_to_another_caller(test_infra, identity_service):
    """The reported attack: the same Idempotency-Key as someone's sign-in (or refresh), with one's own body,
    while the gateway remembers the key and after it forgot it (TTL shortened to 1 s here)."""
    settings = gateway_settings(test_infra, identity_service.address, idempotency_ttl_seconds=1)
    async with running_gateway(settings) as api:
        company = await sign_up(api)
        key, refresh_key = str(uuid.uuid4()), str(uuid.uuid4())
        victim = await api.post(
            TOKEN, json={"email": company.email, "password": PASSWORD}, headers={"Idempotency-Key": key}
        )
        assert victim.status_code == 200, victim.text
        refreshed = await api.post(
            REFRESH,
            json={"refresh_token": victim.json()["refresh_token"]},
            headers={"Idempotency-Key": refresh_key},
        )
        assert refreshed.status_code == 200, refreshed.text
        for wait in (0.0, 1.5):
            await asyncio.sleep(wait)
            other = await api.post(
                TOKEN,
                json={"email": unique_email(), "password": "a guess"},
                headers={"Idempotency-Key": key},
            )
            assert other.status_code == 401 and "access_token" not in other.text, (wait, other.text)
            other = await api.post(
                REFRESH, json={"refresh_token": "not-a-token"}, headers={"Idempotency-Key": refresh_key}
            )
            assert other.status_code == 401 and "access_token" not in other.text, (wait, other.text)


def _sample(model: Any, tag: str) -> dict[str, Any]:
    """A body that passes the route's schema: every string field set to something of this caller's own."""
    body = {}
    for name, prop in model.model_json_schema().get("properties", {}).items():
        kinds = [prop, *prop.get("anyOf", [])]
        if any(k.get("type") == "string" and "enum" not in k and "format" not in k for k in kinds):
            body[name] = unique_email(tag) if "email" in name else f"{tag}-{uuid.uuid4().hex[:12]}"
    return body


async def test_every_public_route_keeps_callers_apart(api):
    """Class: every POST that takes no credential. Another caller's request under the same key is its own
    request (never the first one's answer, nor a refusal that reveals the key is in use); the first caller's
    own retry is still replayed."""
    plans = [p for p in api.app.state.plans if p.public and p.idempotent and p.body_model is not None]
    assert {p.path for p in plans} >= {TOKEN, REFRESH, "/api/v1/auth/signup"}
    replayed = set()
    for plan in plans:
        key = str(uuid.uuid4())
        mine = _sample(plan.body_model, "first")
        first = await api.post(plan.path, json=mine, headers={"Idempotency-Key": key})
        other = await api.post(
            plan.path, json=_sample(plan.body_model, "other"), headers={"Idempotency-Key": key}
        )
        assert "idempotent-replayed" not in other.headers, (plan.path, other.text)
        assert "idempotency_key_reused" not in other.text, (plan.path, other.text)
        if first.status_code < 500:
            again = await api.post(plan.path, json=mine, headers={"Idempotency-Key": key})
            assert again.headers.get("idempotent-replayed") == "true", (plan.path, again.text)
            assert (again.status_code, again.content) == (first.status_code, first.content)
            replayed.add(plan.path)
    # A route whose first answer was a 5xx (its key released) proves nothing about replays: the reported
    # routes at least must have answered and been replayed.
    assert replayed >= {TOKEN, REFRESH, "/api/v1/auth/signup"}, replayed
