"""Access tokens: short-lived JWTs signed with Ed25519 by identity, verified by everyone else from the JWKS.

Per RFC 8725: one algorithm allowed (EdDSA; "none" and HMAC never), issuer, audience, expiry and the tenant
claim are required and checked, and keys are chosen by `kid` from the published key set.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from crm.common.v1 import event_pb2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crm_kit.context import Principal
from crm_kit.errors import Unauthenticated
from crm_kit.ids import new_id

_log = logging.getLogger("crm.auth")

ALGORITHM = "EdDSA"
ALLOWED_ALGORITHMS = [ALGORITHM]
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "tid", "jti"]
# How often a verifier refetches the key set at most (CRM_JWKS_REFRESH_SECONDS): the bound on how long a retired
# signing key keeps verifying.
DEFAULT_JWKS_REFRESH_SECONDS = 60.0
ACTOR_TYPES = {"user": event_pb2.ACTOR_TYPE_USER, "api_key": event_pb2.ACTOR_TYPE_API_KEY}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
    # RFC 7638 thumbprint as the key id: stable, derived, nothing to configure.
    thumbprint = hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
    return {**jwk, "kid": _b64(thumbprint), "alg": ALGORITHM, "use": "sig"}


class SigningKeys:
    """Identity's private keys, newest first: the first signs, all are published so old tokens still verify."""

    def __init__(self, keys: list[Ed25519PrivateKey]):
        if not keys:
            raise ValueError("at least one signing key is needed")
        self.keys = keys
        self.kids = [public_jwk(k.public_key())["kid"] for k in keys]

    @classmethod
    def from_pem(cls, pem_text: str) -> SigningKeys:
        blocks = [b for b in pem_text.split("-----END PRIVATE KEY-----") if "BEGIN PRIVATE KEY" in b]
        keys = []
        for block in blocks:
            key = serialization.load_pem_private_key(
                (block + "-----END PRIVATE KEY-----").strip().encode(), None
            )
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("CRM_JWT_PRIVATE_KEYS must hold Ed25519 private keys")
            keys.append(key)
        return cls(keys)

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKeys:
        """For local runs: a key kept in the data directory, made on first start."""
        if path.exists():
            return cls.from_pem(path.read_text())
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        path.write_bytes(generate_pem(key))
        path.chmod(0o600)
        return cls([key])

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k.public_key()) for k in self.keys]}


def generate_pem(key: Ed25519PrivateKey | None = None) -> bytes:
    key = key or Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int


class TokenIssuer:
    def __init__(self, keys: SigningKeys, *, issuer: str, audience: str, ttl_seconds: int = 600):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl_seconds

    def issue(self, principal: Principal, *, ttl_seconds: int | None = None) -> IssuedToken:
        ttl = ttl_seconds or self.ttl
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": principal.actor_id,
            "tid": principal.tenant_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": new_id(),
            "typ": "api_key" if principal.is_api_key else "user",
            "name": principal.name,
            "roles": list(principal.role_ids),
            "dept": principal.department_id,
        }
        token = jwt.encode(claims, self.keys.keys[0], algorithm=ALGORITHM, headers={"kid": self.keys.kids[0]})
        return IssuedToken(token=token, expires_in=ttl)


JwksSource = Callable[[], Awaitable[dict[str, Any]]]


class JwtVerifier:
    """Verifies access tokens against a key set. The set is refetched every `refresh_seconds` (so a key identity
    retired stops verifying within that time, cached verifications included) and for an unknown `kid` (at
    most every 30 s, or `refresh_seconds` if shorter)."""

    def __init__(
        self,
        jwks_source: JwksSource,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: int = 5,
        refresh_seconds: float = DEFAULT_JWKS_REFRESH_SECONDS,
    ):
        self._source = jwks_source
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds
        self.refresh_seconds = refresh_seconds
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._refresh_due = 0.0
        self._lock = asyncio.Lock()
        # Verified tokens (insertion-ordered, oldest evicted first) with their expiry and key id.
        self._verified: dict[str, tuple[Principal, float, str]] = {}
        self.cache_size = 10_000

    def load(self, jwks: dict[str, Any]) -> None:
        keys = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
                keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
        self._keys = keys
        self._fetched_at = time.monotonic()
        self._refresh_due = self._fetched_at + self.refresh_seconds
        # A token verified with a key that is gone is no longer trusted.
        for token in [t for t, (_, _, kid) in self._verified.items() if kid not in keys]:
            del self._verified[token]

    async def _refresh_if_due(self) -> None:
        if not self._keys or time.monotonic() < self._refresh_due:
            return
        async with self._lock:
            if time.monotonic() < self._refresh_due:
                return
            try:
                self.load(await self._source())
            except Exception as exc:  # identity unreachable: keep the keys we have, try again soon
                self._refresh_due = time.monotonic() + min(self.refresh_seconds, 5.0)
                _log.warning("the signing key set could not be refreshed: %s", exc)

    async def _key_for(self, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            if kid not in self._keys and (
                not self._keys or time.monotonic() - self._fetched_at > min(30, self.refresh_seconds)
            ):
                self.load(await self._source())
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("token signed with an unknown key", reason="invalid_token")
        return key

    async def verify(self, token: str) -> Principal:
        """The caller a token stands for. A token verified before is answered from a small cache until it
        expires, so a busy client does not pay a signature check per request."""
        await self._refresh_if_due()
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires_at, _ = cached
            if time.time() < expires_at:
                return principal
            del self._verified[token]
        principal, expires_at, kid = await self._verify(token)
        if len(self._verified) >= self.cache_size:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = (principal, expires_at, kid)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed token", reason="invalid_token") from exc
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise Unauthenticated("token algorithm not allowed", reason="invalid_token")
        kid = str(header.get("kid", ""))
        return (*self.verify_with_key(token, await self._key_for(kid)), kid)

    def verify_with_key(self, token: str, key: Any) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALLOWED_ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired", reason="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}", reason="invalid_token") from exc
        typ = claims.get("typ", "user")
        if typ not in ACTOR_TYPES or not claims["tid"]:
            raise Unauthenticated("invalid token: bad type or tenant", reason="invalid_token")
        principal = Principal(
            tenant_id=claims["tid"],
            actor_id=claims["sub"],
            actor_type=ACTOR_TYPES[typ],
            name=claims.get("name", ""),
            role_ids=tuple(claims.get("roles", [])),
            department_id=claims.get("dept", ""),
            api_key_id=claims["sub"] if typ == "api_key" else "",
        )
        return principal, float(claims["exp"])


def local_jwks_source(keys: SigningKeys) -> JwksSource:
    async def source() -> dict[str, Any]:
        return keys.jwks()

    return source
