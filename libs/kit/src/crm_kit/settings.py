"""Typed settings from the environment, one class for every service, refusing insecure defaults in production.

A service that needs more subclasses `ServiceSettings` and adds fields; the names stay the ones the Helm chart
sets (CRM_*, and <NAME>_SERVICE_ADDR for the services it calls).
"""

from __future__ import annotations

import re
import ssl
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_DATABASE_HINT = "postgresql+asyncpg://postgres@127.0.0.1:5432/"

# A NATS password the NATS server can take from its environment as it is: the server parses a variable's value
# as a configuration token, so it must start with a letter (not a number, a sign or true/false) and hold no
# separators. "p" + `openssl rand -hex 24` is one.
NATS_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9_+/=.-]{23,}$")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore", populate_by_name=True)

    service_name: str = "crm"
    environment: Literal["local", "test", "production"] = "local"
    # postgresql+asyncpg://user:password@host:port/database — one database per service.
    database_url: str = ""
    database_pool_size: int = 10
    nats_url: str = "nats://127.0.0.1:4222"
    # NATS credentials: each service has its own user, allowed only its own subjects
    # (`crm_kit.events.permissions`, rendered into the NATS server's config by the chart). Either a user and
    # password, or a .creds file (JWT + nkey seed) of an operator-managed NATS.
    nats_user: str = ""
    nats_password: str = ""
    nats_creds_file: str = ""
    # TLS towards NATS: the CA that signed the server's certificate (empty: the system's CAs), and an optional
    # client certificate and key for servers that verify clients. A tls:// URL makes TLS mandatory.
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    # How long a stopping replica keeps serving calls already in flight (match terminationGracePeriodSeconds).
    shutdown_grace_seconds: float = 15.0
    # Temporary files (uploads, import files, XLSX exports): the directory, and what the process may hold there
    # at once (see crm_kit.spool; the chart mounts the directory with a larger sizeLimit).
    spool_dir: str = ""
    spool_max_bytes: int = 1 << 30
    # Run the service's migrations when it starts (local use); in Kubernetes a Job runs them before an upgrade.
    migrate_on_start: bool = False

    # How long an Idempotency-Key is remembered: by the gateway, and by a service for the keyed writes it
    # records (crm_kit.idempotency). One setting, so neither can answer a key the other has forgotten.
    idempotency_ttl_seconds: int = 86_400

    jwt_issuer: str = "crm-identity"
    jwt_audience: str = "crm"
    # How often token verifiers refetch identity's key set: a retired signing key stops verifying within it.
    jwks_refresh_seconds: float = 60.0

    # Outgoing mail (crm_kit.mail): smtp://user:password@host:587 or smtps://host:465; unset, nothing is sent.
    smtp_url: str = ""
    mail_from: str = "CRM <no-reply@crm.local>"

    identity_service_addr: str = Field(
        default="127.0.0.1:50051",
        validation_alias=AliasChoices("IDENTITY_SERVICE_ADDR", "CRM_IDENTITY_SERVICE_ADDR"),
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, value: str) -> str:
        """Accept the plain URLs PostgreSQL operators hand out (postgresql://, postgres://)."""
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        return value

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> ServiceSettings:
        if self.environment == "production":
            problems = self.production_problems()
            if problems:
                raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        """What a subclass adds to here is refused too, e.g. a missing signing key."""
        problems = []
        if not self.database_url:
            problems.append("CRM_DATABASE_URL is not set")
        elif "@" not in self.database_url or self.database_url.split("@")[0].endswith("//postgres"):
            problems.append("CRM_DATABASE_URL must name a role with a password, not the default superuser")
        if self.nats_url.startswith("nats://127.0.0.1"):
            problems.append("CRM_NATS_URL points at localhost")
        problems += self.nats_problems()
        return problems

    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]

    def nats_problems(self) -> list[str]:
        """What production refuses about NATS: anyone reaching it could read every tenant's events or forge
        them, so each service must authenticate as itself and talk TLS."""
        problems = []
        if not self.nats_creds_file and not (self.nats_user and self.nats_password):
            problems.append("NATS needs credentials: CRM_NATS_USER and CRM_NATS_PASSWORD, or CRM_NATS_CREDS_FILE")
        elif self.nats_password and not NATS_PASSWORD.match(self.nats_password):
            problems.append(
                "CRM_NATS_PASSWORD must be 24+ characters, start with a letter, and hold only letters, digits and"
                " _ + / = . - (the NATS server reads it from its environment)"
            )
        if not self.nats_servers() or any(not s.startswith("tls://") for s in self.nats_servers()):
            problems.append("CRM_NATS_URL must use tls:// for every server (TLS is mandatory in production)")
        return problems

    @model_validator(mode="after")
    def _consistent_nats_settings(self) -> ServiceSettings:
        if bool(self.nats_user) != bool(self.nats_password):
            raise ValueError("CRM_NATS_USER and CRM_NATS_PASSWORD go together")
        if self.nats_creds_file and self.nats_user:
            raise ValueError("give CRM_NATS_CREDS_FILE or CRM_NATS_USER/CRM_NATS_PASSWORD, not both")
        if bool(self.nats_tls_cert_file) != bool(self.nats_tls_key_file):
            raise ValueError("CRM_NATS_TLS_CERT_FILE and CRM_NATS_TLS_KEY_FILE go together")
        return self

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect` besides the servers: this service's credentials, TLS, and its
        own reply-inbox prefix (`crm_kit.events.subjects.inbox_prefix`), so that the replies it may receive are
        only its own."""
        from crm_kit.events.subjects import inbox_prefix

        options: dict[str, Any] = {"inbox_prefix": inbox_prefix(self.service_name)}
        if self.nats_user:
            options["user"], options["password"] = self.nats_user, self.nats_password
        if self.nats_creds_file:
            options["user_credentials"] = self.nats_creds_file
        wants_tls = any(s.startswith("tls://") for s in self.nats_servers())
        if wants_tls or self.nats_tls_ca_file or self.nats_tls_cert_file:
            context = ssl.create_default_context(cafile=self.nats_tls_ca_file or None)
            if self.nats_tls_cert_file:
                context.load_cert_chain(self.nats_tls_cert_file, self.nats_tls_key_file)
            options["tls"] = context
            # Servers a cluster announces are addresses; the certificate names the service the URL names.
            options["tls_hostname"] = urlsplit(self.nats_servers()[0]).hostname
        return options
