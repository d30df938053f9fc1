"""`Idempotency-Key` on POST: a retried request is answered with the first response, never run twice.

Entries live in the gateway's own PostgreSQL database (table `idempotency_keys`, see `store.py`), so every
replica sees the same ones and no write depends on NATS. They expire `idempotency_ttl_seconds` (24 h) after
the first request; a service keeps its own copy of a keyed write exactly as long (the one kit setting,
`crm_kit.idempotency`). For a request with a key:

1. The entry name is an HMAC of (scope, key): keys are private to the caller that sent them. The scope of an
   authenticated request is its credential's (tenant, actor). A public route has no credential, so its scope
   is a hash of the request body: only a caller sending the very same request (the same password, refresh
   token or invitation token in it) can ever be given its answer; anyone else with the same key is simply
   another request. The fingerprint is an HMAC of (method, path with query, body).
2. One `INSERT … ON CONFLICT` claims the entry atomically: exactly one request wins and runs.
3. Any other request with the same key gets
   - the first response replayed (status, body, Location/ETag, plus `Idempotent-Replayed: true`) when it is
     done and the fingerprint matches;
   - 422 `idempotency_key_reused` when the fingerprint differs;
   - 409 `idempotency_in_progress` with Retry-After while the first is still running (no waiting: the client
     retries). A pending entry older than `idempotency_lock_seconds` (its replica died) is taken over.
4. Responses below 500 are stored (a 409 or 422 stays the answer for that key); a 5xx or a crash deletes the
   entry so the client may retry with the same key.

Stored bodies are encrypted (AES-GCM) with a key derived from the Idempotency-Key and the scope, so a
one-time secret in a response (a new API key, an invitation token, a public route's tokens) cannot be read
from the table by anyone who does not hold the request's own Idempotency-Key (and, on a public route, its
body). If the database is unreachable, a request *with* a key is refused with 503 rather than run without
the guarantee; requests without a key are unaffected.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import orjson
from crm_kit.idempotency import DEFAULT_TTL_SECONDS
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm_gateway import bounds
from crm_gateway.problems import ProblemError, field_problem, from_grpc, render
from crm_gateway.store import GatewayDatabase

log = logging.getLogger("crm.gateway.idempotency")

MAX_KEY_LENGTH = bounds.IDEMPOTENCY_KEY_MAX_LENGTH
REPLAYED_HEADERS = ("location", "etag", "content-type")


@dataclass(slots=True)
class Reply:
    """A finished HTTP answer, as stored and replayed."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_rpc_error(cls, exc: grpc.RpcError, path: str) -> Reply:
        """A service's refusal as the problem+json answer (kept, so an idempotent replay repeats it too)."""
        rendered = render(from_grpc(exc), path)
        headers = {k: v for k, v in rendered.headers.items() if k.lower() != "content-length"}
        return cls(rendered.status_code, bytes(rendered.body), headers)


# Claims the entry: a new one, one that expired, or one whose claimant died (same request, claimed long ago).
CLAIM = """
INSERT INTO idempotency_keys AS k (name, fingerprint, claim, done, claimed_at, expires_at)
VALUES ($1, $2, $3, false, now(), now() + make_interval(secs => $4))
ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint, claim = excluded.claim, done = false,
    claimed_at = now(), expires_at = excluded.expires_at, reply = NULL
WHERE k.expires_at <= now()
   OR (NOT k.done AND k.fingerprint = excluded.fingerprint AND k.claimed_at < now() - make_interval(secs => $5))
RETURNING claim
"""
EXISTING = "SELECT fingerprint, done, reply FROM idempotency_keys WHERE name = $1 AND expires_at > now()"
FINISH = "UPDATE idempotency_keys SET done = true, reply = $3 WHERE name = $1 AND claim = $2"
RELEASE = "DELETE FROM idempotency_keys WHERE name = $1 AND claim = $2"


def public_scope(body: bytes) -> str:
    """The scope of a request without a credential: its body. Whoever sends the same body already holds
    whatever the answer could give them; anyone else never shares an entry with it."""
    return "public:" + hashlib.sha256(body).hexdigest()


def validate_key(key: str) -> None:
    if len(key) > MAX_KEY_LENGTH:  # as the routes' declared header bound answers it
        raise field_problem("Idempotency-Key", f"must be at most {MAX_KEY_LENGTH} characters")
    if not key or not key.isprintable() or not key.isascii():
        raise ProblemError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
        )


class IdempotencyStore:
    def __init__(
        self,
        database: GatewayDatabase,
        *,
        secret: str,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        lock_seconds: float = 60.0,
    ):
        self.database = database
        self.secret = secret.encode()
        self.ttl = ttl_seconds
        self.lock_seconds = lock_seconds

    # ------------------------------------------------------------ keys and crypto

    def _mac(self, *parts: bytes) -> bytes:
        return hmac.new(self.secret, b"\x00".join(parts), hashlib.sha256).digest()

    def entry_name(self, scope: str, key: str) -> str:
        return self._mac(b"entry", scope.encode(), key.encode()).hex()

    def fingerprint(self, scope: str, method: str, target: str, body: bytes) -> str:
        return self._mac(b"fingerprint", scope.encode(), method.encode(), target.encode(), body).hex()

    def _cipher(self, scope: str, key: str) -> AESGCM:
        return AESGCM(self._mac(b"encrypt", scope.encode(), key.encode()))

    def _seal(self, scope: str, key: str, reply: Reply) -> bytes:
        nonce = os.urandom(12)
        payload = orjson.dumps(
            {"status": reply.status, "headers": reply.headers, "body": reply.body.decode()}
        )
        return nonce + self._cipher(scope, key).encrypt(nonce, payload, None)

    def _open(self, scope: str, key: str, sealed: bytes) -> Reply:
        data = orjson.loads(self._cipher(scope, key).decrypt(sealed[:12], sealed[12:], None))
        return Reply(data["status"], data["body"].encode(), data["headers"])

    # ------------------------------------------------------------ the protocol

    async def run(
        self,
        *,
        scope: str,
        key: str,
        method: str,
        target: str,
        body: bytes,
        execute: Callable[[], Awaitable[Reply]],
    ) -> Reply:
        """Run `execute` once for (scope, key); replay its reply to every later request with the same key."""
        validate_key(key)
        name = self.entry_name(scope, key)
        fp = self.fingerprint(scope, method, target, body)
        claim = os.urandom(16).hex()
        try:
            replayed = await self._claim(name, fp, claim, scope, key)
        except ProblemError:
            raise
        except Exception as exc:  # the database lost or slow: refuse rather than risk a double run
            log.warning("idempotency store failed: %s", exc)
            raise _unavailable() from None
        if replayed is not None:
            return replayed
        try:
            reply = await execute()
        except BaseException:
            await self._release(name, claim)
            raise
        if reply.status >= 500:
            await self._release(name, claim)
            return reply
        sealed = self._seal(scope, key, Reply(reply.status, reply.body, _replayable(reply.headers)))
        try:
            await self.database.pool.execute(FINISH, name, claim, sealed)
        except Exception as exc:  # the work is done; answer it even if it cannot be remembered
            log.warning("could not store the idempotent reply: %s", exc)
        return reply

    async def _claim(self, name: str, fp: str, claim: str, scope: str, key: str) -> Reply | None:
        """None when this request holds the claim and must run; else the stored reply (or a problem)."""
        pool = self.database.pool
        for _ in range(3):
            if await pool.fetchval(CLAIM, name, fp, claim, float(self.ttl), self.lock_seconds) == claim:
                return None
            row = await pool.fetchrow(EXISTING, name)
            if row is None:
                continue  # expired or released meanwhile: try to claim it again
            if row["fingerprint"] != fp:
                raise ProblemError(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used with a different request; use a new key",
                )
            if row["done"]:
                reply = self._open(scope, key, row["reply"])
                reply.headers["Idempotent-Replayed"] = "true"
                return reply
            raise _in_progress()
        raise _in_progress()  # claimed, released and claimed again by others meanwhile: still someone else's

    async def _release(self, name: str, claim: str) -> None:
        try:
            await self.database.pool.execute(RELEASE, name, claim)
        except Exception as exc:  # the claim then lapses after lock_seconds
            log.warning("could not release an idempotency key: %s", exc)


def _replayable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() in REPLAYED_HEADERS}


def _in_progress() -> ProblemError:
    return ProblemError(
        409,
        "idempotency_in_progress",
        "a request with this Idempotency-Key is still being processed; retry shortly",
        headers={"Retry-After": "1"},
    )


def _unavailable() -> ProblemError:
    return ProblemError(
        503,
        "idempotency_unavailable",
        "Idempotency-Key cannot be honoured right now; retry later (or send the request without a key)",
        headers={"Retry-After": "2"},
    )
