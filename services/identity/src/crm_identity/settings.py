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
    # Sign-in throttling (OWASP): after the free attempts, each further failure doubles the wait (1 s, 2 s,
    # 4 s, ...) up to the cap. Per account from one client address; per client address over all accounts;
    # per account over all addresses (looser, with a short cap, so an outsider cannot keep the owner out).
    login_free_attempts: int = 5
    login_first_delay_seconds: float = 1.0
    login_max_delay_seconds: int = 900
    login_source_free_attempts: int = 20
    login_account_free_attempts: int = 50
    login_account_max_delay_seconds: int = 60
    # A signed-up address must be verified within this; after it, the sign-up no longer signs in.
    email_verification_days: int = 7
    # New verification mails to one address (asked for again): a few free, then 1 min, 2 min, 4 min ... up to 1 h
    # between them, so nobody can bury an inbox in them.
    verification_mail_free_sends: int = 3
    verification_mail_first_delay_seconds: float = 60.0
    verification_mail_max_delay_seconds: int = 3600
    # Where the web app verifies an address; the token is appended (e.g. https://crm.example.com/verify?token=).
    # Unset, the mail carries only the token (for POST /v1/auth/verify-email).
    verify_email_url: str = ""
    default_api_key_rate_limit: int = 600
    # OWASP's argon2id baseline: 19 MiB, 2 iterations, 1 lane.
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if not self.jwt_private_keys:
            problems.append("CRM_JWT_PRIVATE_KEYS is not set")
        if not self.smtp_url:
            problems.append("CRM_SMTP_URL is not set (sign-up mails a verification link)")
        return problems

    def signing_keys(self) -> SigningKeys:
        if self.jwt_private_keys:
            return SigningKeys.from_pem(self.jwt_private_keys)
        return SigningKeys.load_or_create(self.data_dir / "jwt-signing-key.pem")
