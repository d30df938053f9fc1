"""`Idempotency-Key` on POST: a retried request is answered with the first response, never run twice.

Entries live in a NATS JetStream key-value bucket, `<CRM_EVENTS_NAMESPACE>_idempotency` (or `crm_idempotency`;
24 h TTL), so every
gateway replica sees the same ones. For a request with a key:

1. The entry name is an HMAC of (tenant, actor, key): keys are private to the credential that sent them.
   The fingerprint is an HMAC of (method, path with query, body).
2. `kv.create(entry, pending)` is atomic: exactly one request wins and runs.
3. Any other request with the same key gets
   - the first response replayed (status, body, Location/ETag, plus `Idempotent-Replayed: true`) when it is
     done and the fingerprint matches;
   - 422 `idempotency_key_reused` when the fingerprint differs;
   - 409 `idempotency_in_progress` with Retry-After while the first is still running (no waiting: the client
     retries). A pending entry older than `idempotency_lock_seconds` (its replica died) is taken over.
4. Responses below 500 are stored (a 409 or 422 stays the answer for that key); a 5xx or a crash deletes the
   entry so the client may retry with the same key.

Stored bodies are encrypted (AES-GCM) with a key derived from the Idempotency-Key and the credential, so a
one-time secret in a response (a new API key, an invitation token) cannot be read from the bucket by anyone
who does not hold the request's own Idempotency-Key. If NATS is unreachable, a request *with* a key is refused
with 503 rather than run without the guarantee; requests without a key are unaffected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from crm_gateway.problems import ProblemError, from_grpc, render

log = logging.getLogger("crm.gateway.idempotency")

MAX_KEY_LENGTH = 255
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


def bucket_name(namespace: str) -> str:
    return f"{namespace}_idempotency" if namespace else "crm_idempotency"


def validate_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise ProblemError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
        )


class IdempotencyStore:
    def __init__(
        self,
        nats_url: str,
        *,
        connect_options: dict[str, Any] | None = None,
        namespace: str,
        secret: str,
        ttl_seconds: int = 86_400,
        lock_seconds: float = 60.0,
    ):
        self.nats_url = nats_url
        self.connect_options = dict(connect_options or {})
        self.bucket = bucket_name(namespace)
        self.secret = secret.encode()
        self.ttl = ttl_seconds
        self.lock_seconds = lock_seconds
        self._nc: nats.NATS | None = None
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        self._last_attempt = 0.0

    async def start(self) -> None:
        """Connect now if NATS is there; otherwise the first request with a key tries again."""
        try:
            await self._connect()
        except Exception as exc:  # the gateway serves everything else without NATS
            log.warning("idempotency store unavailable at start (%s); will retry on use", exc)

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()
        self._nc = self._kv = None

    async def _connect(self) -> KeyValue:
        async with self._lock:
            if self._kv is not None:
                return self._kv
            self._last_attempt = time.monotonic()
            if self._nc is None:

                async def on_error(exc: Exception) -> None:
                    log.warning("NATS: %s", exc or type(exc).__name__)

                # One try now (a request is waiting); once connected, reconnect forever.
                self._nc = await nats.connect(
                    self.nats_url,
                    name="crm-gateway",
                    connect_timeout=2,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.5,
                    error_cb=on_error,
                    **self.connect_options,
                )
                self._nc.options["max_reconnect_attempts"] = -1
            js = self._nc.jetstream()
            try:
                self._kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(bucket=self.bucket, ttl=self.ttl, history=1)
            return self._kv

    async def _bucket(self) -> KeyValue:
        if self._kv is not None:
            return self._kv
        if time.monotonic() - self._last_attempt < 2.0:
            raise _unavailable()
        try:
            return await self._connect()
        except Exception as exc:
            if self._nc is not None and not self._nc.is_connected:
                await self._nc.close()
                self._nc = None
            log.warning("idempotency store unavailable: %s", exc)
            raise _unavailable() from None

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
        kv = await self._bucket()
        name = self.entry_name(scope, key)
        fp = self.fingerprint(scope, method, target, body)
        pending = orjson.dumps({"state": "pending", "fp": fp, "at": time.time()})
        try:
            revision = await self._claim(kv, name, fp, pending, scope, key)
        except ProblemError:
            raise
        except Exception as exc:  # NATS lost or slow: refuse rather than risk a double run
            log.warning("idempotency store failed: %s", exc)
            raise _unavailable() from None
        if isinstance(revision, Reply):
            return revision
        try:
            reply = await execute()
        except BaseException:
            await self._release(kv, name, revision)
            raise
        if reply.status >= 500:
            await self._release(kv, name, revision)
            return reply
        done = {
            "state": "done",
            "fp": fp,
            "at": time.time(),
            "reply": base64.b64encode(
                self._seal(scope, key, Reply(reply.status, reply.body, _replayable(reply.headers)))
            ).decode(),
        }
        try:
            await kv.update(name, orjson.dumps(done), last=revision)
        except Exception as exc:  # the work is done; answer it even if it cannot be remembered
            log.warning("could not store the idempotent reply: %s", exc)
        return reply

    async def _claim(
        self, kv: KeyValue, name: str, fp: str, pending: bytes, scope: str, key: str
    ) -> int | Reply:
        for _ in range(3):
            try:
                return await kv.create(name, pending)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(name)
            except KeyNotFoundError:
                continue  # expired or released meanwhile: try to claim it again
            data = orjson.loads(entry.value or b"{}")
            if data.get("fp") != fp:
                raise ProblemError(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used with a different request; use a new key",
                )
            if data.get("state") == "done":
                reply = self._open(scope, key, base64.b64decode(data["reply"]))
                reply.headers["Idempotent-Replayed"] = "true"
                return reply
            if time.time() - float(data.get("at", 0)) < self.lock_seconds:
                raise ProblemError(
                    409,
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                    headers={"Retry-After": "1"},
                )
            try:  # the replica that claimed it died: take over, atomically
                assert entry.revision is not None
                return await kv.update(name, pending, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
        raise ProblemError(
            409,
            "idempotency_in_progress",
            "a request with this Idempotency-Key is being processed; retry shortly",
            headers={"Retry-After": "1"},
        )

    async def _release(self, kv: KeyValue, name: str, revision: int) -> None:
        try:
            await kv.delete(name, last=revision)
        except Exception as exc:  # the lock then lapses after lock_seconds
            log.warning("could not release an idempotency key: %s", exc)


def _replayable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() in REPLAYED_HEADERS}


def _unavailable() -> ProblemError:
    return ProblemError(
        503,
        "idempotency_unavailable",
        "Idempotency-Key cannot be honoured right now; retry later (or send the request without a key)",
        headers={"Retry-After": "2"},
    )
