"""Who is calling: `Authorization: Bearer <access token>` or `X-API-Key: <key>`, checked at the edge.

- A bearer token is verified here with identity's published keys (crm_kit.auth.JwtVerifier: EdDSA only,
  iss/aud/exp required; the key set is fetched through IdentityService.GetJwks, cached, and refetched when a
  token names an unknown `kid`). The same token is then forwarded to the services, which verify it again.
- An API key is exchanged at IdentityService.AuthenticateApiKey for a short-lived access token, which is
  forwarded the same way. The answer is cached for `api_key_cache_seconds` (30 s) under a SHA-256 of the key.
  A revocation drops it at once on every gateway replica (they follow identity's ApiKeyRevoked events); only
  while NATS is unreachable can a revoked key keep working, for at most that long. Keys identity rejects
  are remembered for 5 s, so a client retrying a bad key does not reach identity every time.

The tenant is always the credential's; nothing in the request can choose it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from crm.identity.v1 import identity_pb2
from crm_kit.auth import JwtVerifier
from crm_kit.context import Principal
from crm_kit.errors import DomainError

from crm_gateway.problems import ProblemError, from_grpc, www_authenticate

ApiKeyExchange = Callable[[str], Awaitable[identity_pb2.AuthenticateApiKeyResponse]]

NEGATIVE_CACHE_SECONDS = 5.0
MAX_CACHED_KEYS = 10_000
MAX_CREDENTIAL_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    # The access token forwarded to services as `authorization: Bearer …`.
    token: str
    api_key_id: str = ""
    api_key_rate_limit_per_minute: int = 0


def unauthenticated(code: str, detail: str, *, challenge_error: str = "invalid_token") -> ProblemError:
    return ProblemError(
        401, code, detail, headers={"WWW-Authenticate": www_authenticate(challenge_error, detail)}
    )


class Authenticator:
    def __init__(self, verifier: JwtVerifier, exchange_api_key: ApiKeyExchange, *, api_key_ttl: float = 30.0):
        self.verifier = verifier
        self.exchange_api_key = exchange_api_key
        self.api_key_ttl = api_key_ttl
        self._keys: dict[str, tuple[float, Caller | ProblemError]] = {}
        self._inflight: dict[str, asyncio.Future[Caller]] = {}

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Caller:
        if authorization and api_key:
            raise unauthenticated(
                "ambiguous_credentials",
                "send either Authorization or X-API-Key, not both",
                challenge_error="invalid_request",
            )
        if authorization:
            return await self._bearer(authorization)
        if api_key:
            return await self._api_key(api_key.strip())
        raise ProblemError(
            401,
            "missing_credential",
            "this route needs `Authorization: Bearer <access token>` or `X-API-Key: <key>`",
            headers={"WWW-Authenticate": www_authenticate()},
        )

    async def _bearer(self, authorization: str) -> Caller:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated(
                "invalid_authorization_header",
                "the Authorization header must be `Bearer <access token>`",
                challenge_error="invalid_request",
            )
        if len(token) > MAX_CREDENTIAL_LENGTH:
            raise unauthenticated("invalid_token", "token too long")
        return Caller(principal=await self.verify(token), token=token)

    async def verify(self, token: str) -> Principal:
        try:
            return await self.verifier.verify(token)
        except DomainError as exc:
            raise unauthenticated(exc.reason, exc.message) from None
        except grpc.RpcError as exc:  # the key set could not be fetched
            raise from_grpc(exc) from None

    async def _api_key(self, key: str) -> Caller:
        if not key or len(key) > MAX_CREDENTIAL_LENGTH:
            raise unauthenticated("invalid_api_key", "the API key is not valid")
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], ProblemError):
                p = cached[1]
                raise ProblemError(p.status, p.code, p.detail, headers=p.headers)
            return cached[1]
        # One exchange per key at a time, however many requests arrive together.
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Caller] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            caller = await self._exchange(key, digest)
            future.set_result(caller)
            return caller
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            del self._inflight[digest]

    async def _exchange(self, key: str, digest: str) -> Caller:
        try:
            answer = await self.exchange_api_key(key)
        except grpc.RpcError as exc:
            problem = from_grpc(exc)
            if problem.status == 401:
                problem = unauthenticated(problem.code or "invalid_api_key", problem.detail)
                self._remember(digest, problem, NEGATIVE_CACHE_SECONDS)
            raise problem from None
        principal = await self.verify(answer.access_token)
        caller = Caller(
            principal=principal,
            token=answer.access_token,
            api_key_id=answer.api_key_id or principal.api_key_id,
            api_key_rate_limit_per_minute=answer.rate_limit_per_minute,
        )
        # Never trust the exchange longer than its token lives.
        ttl = (
            min(self.api_key_ttl, max(0.0, answer.expires_in - 5.0))
            if answer.expires_in
            else self.api_key_ttl
        )
        self._remember(digest, caller, ttl)
        return caller

    def _remember(self, digest: str, value: Caller | ProblemError, ttl: float) -> None:
        now = time.monotonic()
        if len(self._keys) >= MAX_CACHED_KEYS:
            self._keys = {k: v for k, v in self._keys.items() if v[0] > now}
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()
        self._keys[digest] = (now + ttl, value)

    def knows_api_key(self, key: str) -> bool:
        """True when `key` has a cached, still valid exchange (it was accepted recently)."""
        cached = self._keys.get(hashlib.sha256(key.strip().encode()).hexdigest())
        return cached is not None and cached[0] > time.monotonic() and isinstance(cached[1], Caller)

    def forget_api_keys(self) -> None:
        self._keys.clear()

    def forget_api_key(self, api_key_id: str) -> None:
        """Drop a key's cached exchange (it was revoked): its next request asks identity, which refuses it."""
        self._keys = {
            digest: entry
            for digest, entry in self._keys.items()
            if not (isinstance(entry[1], Caller) and entry[1].api_key_id == api_key_id)
        }
