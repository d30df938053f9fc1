from __future__ import annotations

from pathlib import Path

from crm_kit.auth import SigningKeys
from crm_kit.settings import ServiceSettings


class IdentitySettings(ServiceSettings):
    service_name: str = "identity"
    # PEM Ed25519 private keys, newest first (the first signs; all are published in the JWKS).
    jwt_private_keys: str = ""
    # Local runs keep a generated key here when no key is given.
    data_dir: Path = Path(".crm-data/identity")
    access_token_ttl_seconds: int = 300
    api_key_token_ttl_seconds: int = 300
    refresh_token_ttl_days: int = 30
    invitation_ttl_days: int = 7
    lockout_threshold: int = 5
    lockout_minutes: int = 15
    default_api_key_rate_limit: int = 600
    # OWASP's argon2id baseline: 19 MiB, 2 iterations, 1 lane.
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if not self.jwt_private_keys:
            problems.append("CRM_JWT_PRIVATE_KEYS is not set")
        return problems

    def signing_keys(self) -> SigningKeys:
        if self.jwt_private_keys:
            return SigningKeys.from_pem(self.jwt_private_keys)
        return SigningKeys.load_or_create(self.data_dir / "jwt-signing-key.pem")
