"""Typed settings from the environment, one class for every service, refusing insecure defaults in production.

A service that needs more subclasses `ServiceSettings` and adds fields; the names stay the ones the Helm chart
sets (CRM_*, and <NAME>_SERVICE_ADDR for the services it calls).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_DATABASE_HINT = "postgresql+asyncpg://postgres@127.0.0.1:5432/"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore", populate_by_name=True)

    service_name: str = "crm"
    environment: Literal["local", "test", "production"] = "local"
    # postgresql+asyncpg://user:password@host:port/database — one database per service.
    database_url: str = ""
    database_pool_size: int = 10
    nats_url: str = "nats://127.0.0.1:4222"
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

    jwt_issuer: str = "crm-identity"
    jwt_audience: str = "crm"

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
        return problems
